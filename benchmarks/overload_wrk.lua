-- wrk script for the overload storm (docs/reliability.md): posts one sentence, counts statuses.
-- wrk -t1 -c256 -d15s -s benchmarks/overload_wrk.lua http://127.0.0.1:8000/v1/embeddings
wrk.method = "POST"
wrk.body = '{"input": "A man is playing a guitar on the stage tonight.", "model": "all-MiniLM-L6-v2"}'
wrk.headers["Content-Type"] = "application/json"
c200 = 0; c429 = 0; cother = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  if status == 200 then c200 = c200 + 1 elseif status == 429 then c429 = c429 + 1 else cother = cother + 1 end
end
function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("c200"); b = b + t:get("c429"); c = c + t:get("cother") end
  io.write(string.format("RESULT 200=%d 429=%d other=%d seconds=%.2f errors=%d/%d/%d/%d/%d\n", a, b, c,
    summary.duration / 1e6, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout))
end

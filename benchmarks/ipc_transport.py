"""Which IPC should carry requests from front-end processes to the engine process (issue 16)?

One client process (a front-end) multiplexes `concurrency` requests over one connection to one
server process (the engine), which answers each at once with an array of the real size (no
compute): what is left is the transport's own cost. Each request carries token ids as raw int32
bytes plus a small orjson header; each answer, float32 vectors [n, 384] as raw bytes. Measured:
round trips/s, and the CPU µs per round trip on each side (process CPU time / requests), for

* `uds`: asyncio streams over a Unix domain socket, length-prefixed frames (stdlib only);
* `zmq`: pyzmq's asyncio DEALER/ROUTER over ipc:// (when pyzmq is installed).

    python benchmarks/ipc_transport.py --requests 20000 --out bench-results/ipc.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import struct
import tempfile
import time

import numpy as np
import orjson

DIM = 384
WORKLOADS = {"single": (1, 12), "bulk": (32, 24)}  # sentences per request, tokens per sentence
_LEN = struct.Struct("<II")  # header length, payload length


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid or os.getpid()}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def answer(header: bytes) -> tuple[bytes, bytes]:
    asked = orjson.loads(header)
    vectors = np.zeros((asked["n"], DIM), dtype=np.float32)
    return orjson.dumps({"id": asked["id"], "shape": vectors.shape}), memoryview(vectors).cast("B")  # no copy


# ---- asyncio over a Unix domain socket ---------------------------------------------------------


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head_len, body_len = _LEN.unpack(await reader.readexactly(_LEN.size))
    data = await reader.readexactly(head_len + body_len)
    return data[:head_len], data[head_len:]


def write_frame(writer: asyncio.StreamWriter, header: bytes, payload: bytes) -> None:
    writer.write(_LEN.pack(len(header), len(payload)))  # a byte memoryview's len is its size
    writer.write(header)
    writer.write(payload)


def uds_server(path: str, ready) -> None:
    async def handle(reader, writer):
        try:
            while True:
                header, _ = await read_frame(reader)
                write_frame(writer, *answer(header))
        except asyncio.IncompleteReadError:
            writer.close()

    async def main():
        server = await asyncio.start_unix_server(handle, path)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def uds_client(path: str, workload: tuple[int, int], requests: int, concurrency: int) -> float:
    reader, writer = await asyncio.open_unix_connection(path)
    waiting: dict[int, asyncio.Future] = {}

    async def receive():
        while True:
            header, payload = await read_frame(reader)
            meta = orjson.loads(header)
            waiting.pop(meta["id"]).set_result(np.frombuffer(payload, dtype=np.float32).reshape(meta["shape"]))

    receiver = asyncio.create_task(receive())
    return await drive(workload, requests, concurrency, waiting, lambda h, p: write_frame(writer, h, p), receiver)


# ---- pyzmq DEALER/ROUTER -------------------------------------------------------------------------


def zmq_server(address: str, ready) -> None:
    import zmq
    import zmq.asyncio

    async def main():
        socket = zmq.asyncio.Context().socket(zmq.ROUTER)
        socket.bind(address)
        ready.set()
        while True:
            peer, header, _ = await socket.recv_multipart(copy=False)
            await socket.send_multipart([peer, *answer(header.bytes)], copy=False)

    asyncio.run(main())


async def zmq_client(address: str, workload: tuple[int, int], requests: int, concurrency: int) -> float:
    import zmq
    import zmq.asyncio

    socket = zmq.asyncio.Context().socket(zmq.DEALER)
    socket.connect(address)
    waiting: dict[int, asyncio.Future] = {}

    async def receive():
        while True:
            header, payload = await socket.recv_multipart(copy=False)
            meta = orjson.loads(header.bytes)
            waiting.pop(meta["id"]).set_result(np.frombuffer(payload.buffer, dtype=np.float32).reshape(meta["shape"]))

    receiver = asyncio.create_task(receive())
    return await drive(workload, requests, concurrency, waiting, lambda h, p: socket.send_multipart([h, p], copy=False), receiver)


# ---- the closed loop both share ------------------------------------------------------------------


async def drive(workload, requests, concurrency, waiting, send, receiver) -> float:
    n, tokens = workload
    ids = np.arange(n * tokens, dtype=np.int32).tobytes()
    lengths = [tokens] * n
    counter = iter(range(requests))
    loop = asyncio.get_running_loop()

    async def client():
        for request_id in counter:
            future = loop.create_future()
            waiting[request_id] = future
            send(orjson.dumps({"id": request_id, "n": n, "lengths": lengths, "tasks": ["embed"]}), ids)
            vectors = await future
            assert vectors.shape == (n, DIM)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    receiver.cancel()
    return elapsed


def measure(transport: str, workload: str, requests: int, concurrency: int) -> dict:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    folder = tempfile.mkdtemp()
    if transport == "uds":
        address = os.path.join(folder, "engine.sock")
        server = ctx.Process(target=uds_server, args=(address, ready), daemon=True)
        client = uds_client
    else:
        address = f"ipc://{folder}/engine.zmq"
        server = ctx.Process(target=zmq_server, args=(address, ready), daemon=True)
        client = zmq_client
    server.start()
    ready.wait(30)
    asyncio.run(client(address, WORKLOADS[workload], 500, concurrency))  # warm-up
    server_before, client_before = cpu_seconds(server.pid), cpu_seconds()
    elapsed = asyncio.run(client(address, WORKLOADS[workload], requests, concurrency))
    server_cpu, client_cpu = cpu_seconds(server.pid) - server_before, cpu_seconds() - client_before
    server.kill()
    return {
        "transport": transport, "workload": workload, "requests": requests, "concurrency": concurrency,
        "round_trips_per_s": round(requests / elapsed), "client_cpu_us": round(client_cpu / requests * 1e6, 1),
        "server_cpu_us": round(server_cpu / requests * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out")
    args = parser.parse_args()
    transports = ["uds"]
    try:
        import zmq  # noqa: F401

        transports.append("zmq")
    except ImportError:
        print("pyzmq not installed: measuring uds only")
    rows = [measure(t, w, args.requests, args.concurrency) for w in WORKLOADS for t in transports]
    print("| transport | workload | round trips/s | client CPU µs/rt | server CPU µs/rt |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['transport']} | {row['workload']} | {row['round_trips_per_s']} | {row['client_cpu_us']} "
              f"| {row['server_cpu_us']} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()

"""An idle server makes no connection the operator did not ask for.

Measured before the fix (ONNX Runtime 1.32, `--dtype fp32`, which runs ONNX Runtime): `import
onnxruntime` starts its 1DS telemetry uploader, which resolved mobile.events.data.microsoft.com
~10 s later and, with no route out, retried 5.5, 8.4, 21 and 43 s after that (a working network
uploads on a ~30 s period instead), and wrote a device id and an event store under
~/.cache/Microsoft. Nothing else (huggingface_hub, transformers, torch, uvicorn) opened a socket.

The server here runs in the ONNX mode with the operator's default environment (no telemetry
variable, no HF_HUB_OFFLINE) and a HOME of its own, idles for IDLE_WINDOW_S (past a 30 s
period), and then must have opened no Internet socket but its listener:

* under strace (`-f -e trace=socket,connect`, when strace is installed and may trace), not one
  socket()/connect() of any family while idle, and over its whole life no AF_INET/AF_INET6
  socket but the listener nor any connect() to such an address: this sees even a DNS query
  that lives a millisecond;
* always, /proc/<pid>/fd polled every 50 ms against /proc/<pid>/net/{tcp,udp,raw}{,6}: no
  Internet socket ever seen open but the listener and connections made to it;
* always, no ~/.cache/Microsoft (ONNX Runtime's device id and telemetry store).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import free_port

pytestmark = pytest.mark.integration

IDLE_WINDOW_S = 35.0
STRACE = shutil.which("strace")
NET_TABLES = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6")


def strace_works() -> bool:
    if STRACE is None:
        return False
    probe = subprocess.run([STRACE, "-f", "-qq", "-e", "trace=socket", "-o", os.devnull, "true"], capture_output=True)
    return probe.returncode == 0


def runs_embedserve(pid: str) -> bool:
    """Whether the process has exec'd the server (a fork of strace still shows strace's argv)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False  # gone meanwhile
    return argv[:3] == [sys.executable.encode(), b"-m", b"embedserve"]


def server_pid(process: subprocess.Popen, traced: bool, timeout: float = 30.0) -> int:
    """The server's pid: the Popen's own, or under strace that of strace's child running embedserve.

    strace forks short-lived probe children of its own at start-up (to test ptrace options), so
    its first child is not always the server: CI once polled a probe, which was gone a moment later.
    """
    if not traced:
        return process.pid
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [pid for pid in children.read_text().split() if runs_embedserve(pid)]
        if found:
            return int(found[0])
        time.sleep(0.05)
    raise RuntimeError("strace started no server")


def stop(process: subprocess.Popen, traced: bool) -> None:
    """SIGTERM to the server itself (strace would only detach from it), then wait for both."""
    try:
        os.kill(server_pid(process, traced, timeout=1), signal.SIGTERM)
    except (RuntimeError, ProcessLookupError, FileNotFoundError):
        process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def inet_sockets(pid: int) -> set[tuple[str, str, str]]:
    """The process's open Internet sockets: (table, local address, state), from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in NET_TABLES:
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.add((table, fields[1], fields[3]))
    return found


def strace_calls(trace_file: Path) -> list[tuple[float, str]]:
    """(time, call) for each socket()/connect() in an `strace -ttt` output file."""
    calls = []
    for line in trace_file.read_text().splitlines():
        match = re.match(r"\s*\d+\s+(\d+\.\d+)\s+((?:socket|connect)\(.*)", line)
        if match:
            calls.append((float(match.group(1)), match.group(2)))
    return calls


def test_an_idle_onnx_server_opens_no_socket_but_its_listener(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {
        key: value for key, value in os.environ.items()
        if key not in ("ORT_DISABLE_TELEMETRY", "HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "HF_HUB_OFFLINE")
    }
    env["HOME"] = str(home)
    port = free_port()
    cache = Path("~/.cache/embedserve").expanduser()  # the real one: the exported graph is reused
    cmd = [
        sys.executable, "-m", "embedserve", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--backend", "onnx", "--dtype", "fp32", "--cache-dir", str(cache),
    ]
    traced = strace_works()
    trace_file = tmp_path / "strace.out"
    if traced:
        cmd = [STRACE, "-f", "-qq", "-ttt", "-e", "trace=socket,connect", "-o", str(trace_file), *cmd]
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        pid = server_pid(process, traced)
        seen: set[tuple[str, str, str]] = set()
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server not ready:\n" + log_path.read_text()
            seen |= inet_sockets(pid)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert "onnx" in httpx.get(f"http://127.0.0.1:{port}/model/info", timeout=5).text

        idle_from = time.time()
        idle_until = time.monotonic() + IDLE_WINDOW_S
        while time.monotonic() < idle_until:
            seen |= inet_sockets(pid)
            time.sleep(0.05)
        idle_to = time.time()
        assert process.poll() is None
    finally:
        stop(process, traced)

    ours = f":{port:04X}"  # the listener, and the connections our /ready polls made to it
    assert ("tcp", f"0100007F{ours}", "0A") in seen  # 127.0.0.1:port, LISTEN
    problems = {"Internet sockets seen open": sorted(sock for sock in seen if not sock[1].endswith(ours))}
    problems["created under HOME"] = sorted(str(p.relative_to(home)) for p in (home / ".cache/Microsoft").rglob("*"))
    if traced:
        calls = strace_calls(trace_file)
        problems["socket()/connect() while idle"] = [call for at, call in calls if idle_from <= at <= idle_to]
        inet = [call for _, call in calls if re.search(r"AF_INET6?\b", call)]
        assert inet and inet[0].startswith("socket(AF_INET, SOCK_STREAM"), inet  # the listener
        problems["Internet socket()/connect() but the listener"] = inet[1:]
    problems = {what: found for what, found in problems.items() if found}
    assert not problems, problems
    print(f"\nidle {IDLE_WINDOW_S:.0f}s; strace {'used' if traced else 'not available: /proc only'}; "
          f"Internet sockets seen {sorted(seen)}")

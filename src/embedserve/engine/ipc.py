"""Requests between front-end processes and the engine process, over a Unix domain socket.

Issue 16 splits the server in two: front-end processes (HTTP, validation, tokenization, response
encoding) and one engine process per device (the model pool, the batcher, the backends). This
module is the wire between them, chosen by measurement (docs/benchmarks.md, "Issue 16"): asyncio
streams over a Unix socket cost a front-end ~11 µs of CPU per single request, pyzmq ~40.

A message is one frame: a fixed prefix (header length, number of arrays), each array's byte
length, an orjson header, then the arrays' raw bytes, never pickled. The header holds the request
id, the operation or the answer, and each array's dtype and shape. Many requests share one
connection; answers come back in any order, matched by id.

* Cancellation: a caller whose task is cancelled (its HTTP client went away) sends `cancel` for
  its id, and the engine cancels that request's task.
* Errors: an `EmbedServeError` raised by an engine handler reaches the caller as the same class,
  message, param, code and Retry-After, so a full queue in the engine is the front-end's 429.
  Anything else is a 500 naming only the operation.
* A lost engine: every call in flight, and every call until a new connection is made, fails at
  once with a 503 (`NotReady`), never hangs.
* Events: the engine can tell every front-end something unasked (`broadcast`: the model list
  changed); a front-end hands them to its `on_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import orjson

from embedserve import errors
from embedserve.errors import BackendFailure, EmbedServeError, NotReady

log = logging.getLogger(__name__)

_PREFIX = struct.Struct("<II")  # header bytes, number of arrays
_LENGTH = struct.Struct("<Q")
MAX_HEADER_BYTES = 16 * 1024 * 1024

Message = tuple[dict[str, Any], list[np.ndarray]]
Handler = Callable[[dict[str, Any], list[np.ndarray]], Awaitable[Message]]


# ---- framing ---------------------------------------------------------------------------------


def write_message(writer: asyncio.StreamWriter, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> None:
    """Queue one frame on `writer` (the caller drains). Arrays go as their own bytes, no copy
    when they are C-contiguous."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    header = {**header, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}
    head = orjson.dumps(header)
    parts = [_PREFIX.pack(len(head), len(arrays)), *(_LENGTH.pack(a.nbytes) for a in arrays), head]
    writer.writelines([*parts, *(memoryview(a).cast("B") for a in arrays if a.nbytes)])


async def read_message(reader: asyncio.StreamReader) -> Message:
    """One frame; IncompleteReadError when the other side has closed."""
    head_len, count = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
    if head_len > MAX_HEADER_BYTES:
        raise ConnectionError(f"IPC header of {head_len} bytes: not an embedserve peer")
    lengths = [_LENGTH.unpack(await reader.readexactly(_LENGTH.size))[0] for _ in range(count)]
    header = orjson.loads(await reader.readexactly(head_len))
    arrays = []
    for (dtype, shape), length in zip(header.pop("arrays"), lengths, strict=True):
        data = await reader.readexactly(length) if length else b""
        arrays.append(np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape))
    return header, arrays


# ---- errors across the wire ------------------------------------------------------------------


def error_header(exc: BaseException, op: str) -> dict[str, Any]:
    if isinstance(exc, EmbedServeError):
        return {
            "kind": type(exc).__name__, "message": exc.message, "param": exc.param, "code": exc.code,
            "retry_after": exc.retry_after,
        }
    log.exception("engine operation %s failed", op, exc_info=exc)
    return {"kind": "BackendFailure", "message": f"the engine failed on {op}", "param": None, "code": None,
            "retry_after": None}


def raise_error(error: dict[str, Any]) -> None:
    """The engine's error, raised again here as the same class (a 500 for one we don't know)."""
    kind = getattr(errors, error["kind"], None)
    if not (isinstance(kind, type) and issubclass(kind, EmbedServeError)):
        kind = BackendFailure
    exc = kind.__new__(kind)
    EmbedServeError.__init__(exc, error["message"], param=error["param"], code=error["code"],
                             retry_after=error["retry_after"])
    raise exc


# ---- the engine's side -----------------------------------------------------------------------


class EngineServer:
    """Answers front-ends: each request runs as its own task with the handler for its `op`."""

    def __init__(self, handlers: dict[str, Handler]):
        self.handlers = handlers
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._connection, path)

    async def close(self) -> None:
        """Stop listening and close every front-end's connection (their calls in flight get 503)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def broadcast(self, event: str, body: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> None:
        """Send every connected front-end an event (no answer expected)."""
        for writer in list(self._writers):
            write_message(writer, {"event": event, "body": body}, arrays)
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        running: dict[int, asyncio.Task] = {}
        self._writers.add(writer)
        try:
            while True:
                header, arrays = await read_message(reader)
                request_id, op = header["id"], header["op"]
                if op == "cancel":
                    if (task := running.get(request_id)) is not None:
                        task.cancel()
                    continue
                task = asyncio.create_task(self._answer(writer, request_id, op, header, arrays))
                running[request_id] = task
                task.add_done_callback(lambda _, rid=request_id: running.pop(rid, None))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the front-end went away: its requests go with it
        finally:
            self._writers.discard(writer)
            for task in list(running.values()):
                task.cancel()
            writer.close()

    async def _answer(self, writer, request_id: int, op: str, header: dict, arrays: list[np.ndarray]) -> None:
        handler = self.handlers.get(op)
        try:
            if handler is None:
                raise BackendFailure(f"the engine has no operation {op!r}")
            result, out = await handler(header.get("args", {}), arrays)
            write_message(writer, {"id": request_id, "result": result}, out)
        except asyncio.CancelledError:
            return  # cancelled by its caller, who expects no answer
        except Exception as exc:  # noqa: BLE001 - every failure is answered, never dropped
            write_message(writer, {"id": request_id, "error": error_header(exc, op)})
        with contextlib.suppress(ConnectionError):
            await writer.drain()


# ---- a front-end's side ----------------------------------------------------------------------


class EngineClient:
    """One connection to the engine, shared by every request of a front-end process."""

    def __init__(self, path: str, on_event: Callable[[str, dict[str, Any], list[np.ndarray]], None] | None = None):
        self.path = path
        self.on_event = on_event
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._receiver: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def connect(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self.path)
        self._receiver = asyncio.create_task(self._receive(reader))

    async def close(self) -> None:
        if self._receiver is not None:
            self._receiver.cancel()
        if self._writer is not None:
            self._writer.close()
        self._lost("the engine connection was closed")

    async def call(self, op: str, args: dict[str, Any] | None = None, arrays: Sequence[np.ndarray] = ()) -> Message:
        """The engine's answer to `op`, or its error raised here."""
        if self._writer is None:
            raise NotReady("the engine is not running; retry shortly")
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            write_message(self._writer, {"id": request_id, "op": op, "args": args or {}}, arrays)
            await self._writer.drain()
            header, out = await future
        except asyncio.CancelledError:
            if self._waiting.pop(request_id, None) is not None and self._writer is not None:
                write_message(self._writer, {"id": request_id, "op": "cancel"})
            raise
        except ConnectionError:
            self._waiting.pop(request_id, None)
            future.cancel()  # answered below, not through the future
            self._lost("the engine connection broke")
            raise NotReady("the engine restarted; retry shortly") from None
        finally:
            self._waiting.pop(request_id, None)
        if "error" in header:
            raise_error(header["error"])
        return header["result"], out

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header, arrays = await read_message(reader)
                if "event" in header:
                    if self.on_event is not None:
                        self.on_event(header["event"], header["body"], arrays)
                    continue
                future = self._waiting.pop(header["id"], None)
                if future is not None and not future.done():
                    future.set_result((header, arrays))
        except (asyncio.IncompleteReadError, ConnectionError):
            self._lost("the engine went away")

    def _lost(self, why: str) -> None:
        """Every call in flight fails now with a 503; later calls too, until `connect` again."""
        self._writer = None
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(NotReady(f"{why}; retry shortly"))

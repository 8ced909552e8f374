"""Runs the app under uvicorn, with the transport limits uvicorn does not have on its own.

* Slow clients. uvicorn's only connection timer is its keep-alive timer, armed after a
  response and cancelled by the first byte of the next request; a new connection has none.
  A client sending one byte a second therefore holds a connection (and its memory) forever.
  `HeaderTimeoutProtocol` gives every request `--header-timeout` seconds to get its headers
  in, counted from the moment the connection opens (first request) or from the request's
  first byte (later requests; until then the connection is idle and `--idle-timeout`, which is
  uvicorn's `timeout_keep_alive`, applies); a new connection that sends nothing is closed
  after `--header-timeout`. The body is bounded by `--body-timeout` in api/middleware.py, and
  here too for the rest of a body the app answered before reading it (401, 413).
* Parser: httptools (llhttp, in C), uvicorn's fast parser: the HTTP layer costs a fraction of
  what h11 (pure Python) did, which is most of what a rejected request costs under overload.
  It bounds nothing by itself, so an incomplete request head is bounded here (16 KiB, as h11 did).
* TLS: `--ssl-keyfile` / `--ssl-certfile`. The TLS handshake, which happens before the HTTP
  protocol sees the connection, is bounded by `--header-timeout` too (asyncio's default is 60 s).
* SIGTERM: not-ready, stop accepting, finish what is in flight (`--graceful-timeout`), exit 0.
* No traffic the operator did not ask for: third-party telemetry is off unless the
  environment turns it on (`quiet_third_parties`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
import urllib.parse
from collections.abc import MutableMapping
from types import SimpleNamespace

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from embedserve.api.fast_refusal import FastRefusal, Gate
from embedserve.api.middleware import GATE
from embedserve.api.responses import dumps, error_body
from embedserve.settings import Settings

log = logging.getLogger(__name__)

# Set before the libraries that read them are imported, unless the environment says otherwise.
# ORT_DISABLE_TELEMETRY: ONNX Runtime's official Linux builds start a 1DS telemetry uploader
# when the module is imported (it resolves mobile.events.data.microsoft.com soon after, then
# keeps retrying) and write a device id under ~/.cache/Microsoft; only this variable, set before
# the import, stops both (`disable_telemetry_events()` does not). The ONNX backend sets it
# too, for uses of the backend outside this server.
# HF_HUB_DISABLE_TELEMETRY: huggingface_hub sends nothing by itself, but with it off the
# requests an operator does ask for (Hub downloads) carry a minimal user agent, and any
# library's `send_telemetry` call is a no-op.
TELEMETRY_OFF = {"ORT_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def quiet_third_parties(environ: MutableMapping[str, str] = os.environ) -> None:
    for name, value in TELEMETRY_OFF.items():
        environ.setdefault(name, value)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus deadlines and a size bound for a client that owes bytes.

    * Headers: armed when the connection opens and when the first byte of a later request
      arrives (llhttp's `on_message_begin`), cancelled by `on_headers_complete`. When it fires,
      a client that had sent part of a request gets a 408 with `Connection: close`; one that
      has sent nothing (a silent new connection) is just closed, since a 408 it did not ask for
      could be read as the answer to the request it is about to send. Bytes of a pipelined
      request that arrive while one is being served are timed from that response's end.
    * Head size: llhttp (through httptools) buffers a request line or header of any length, so
      a head still incomplete past `max_head_bytes` gets a 431 and the connection closes (h11,
      which the server ran on before, refused the same: past 16 KiB buffered and incomplete).
    * Leftover body: a response sent before the body was read (401, 413 on the declared
      length) leaves uvicorn reading and discarding the rest with no timer at all, so the rest
      must arrive within `body_timeout` of the response; then the connection is closed. Once it
      has, the connection is idle and gets uvicorn's keep-alive timer (uvicorn sets none there).
    * An `Upgrade` request (the app serves no websockets) is answered, then the connection
      closes: llhttp parses nothing after one, so no timer would see the bytes that follow.

    Subclasses set `header_timeout` and `body_timeout` (`protocol_class`).
    """

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_head_bytes: int = 16 * 1024
    refusal: FastRefusal | None = None  # answers a full queue's 429 without the ASGI app

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for: str | None = None  # "headers" or "leftover body"
        self._head_begun = False  # bytes of a request whose headers are not complete yet
        self._head_since = 0.0  # when its clock started (loop time)
        self._head_bytes = 0  # how many bytes of it are in, roughly (see data_received)
        self._body_pending = False  # headers complete, the message not yet
        self._message_ended = False  # a message ended in the chunk being parsed
        self._gate: Gate | None = None  # the request being served was let through a full-queue check

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_deadline("headers")

    def data_received(self, data: bytes) -> None:
        self._message_ended = False
        super().data_received(data)
        if not self._head_begun or self.transport.is_closing():
            return  # the usual end of a read: whole requests, no head left half-parsed
        # Where in a chunk a head began is unknown: a chunk in which another message ended is
        # left uncounted (one read, at most 256 KiB); any other holds only head bytes.
        if not self._message_ended:
            self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            if self._idle():
                self._refuse_large_head()
            else:  # pipelined behind a request being served: no more until it is answered
                self.flow.pause_reading()
        elif self._idle() and self._deadline_for is None:  # armed only now: most heads come whole
            self._set_deadline("headers", self._head_since + self.header_timeout)

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun, self._head_since, self._head_bytes = True, self.loop.time(), 0
        self._unset_keepalive_if_required()

    def on_headers_complete(self) -> None:
        self._head_begun, self._body_pending = False, True
        self._clear_deadline()
        if self.refusal is not None and self._idle() and self._answered_at_once():
            return
        super().on_headers_complete()
        if self.parser.should_upgrade():
            self.cycle.keep_alive = False

    def _answered_at_once(self) -> bool:
        """A full queue's 429, written here (api/fast_refusal.py), for a keep-alive request that no
        other is ahead of; its body, if any, is then read and dropped like that of any early answer."""
        parser = self.parser
        if parser.should_upgrade() or parser.get_http_version() != "1.1" or not parser.should_keep_alive():
            return False
        try:
            path = httptools.parse_url(self.url).path.decode("ascii")
            if "%" in path:
                path = urllib.parse.unquote(path)
            response = self.refusal.answer(
                parser.get_method().decode("ascii"), self.root_path + path, self.root_path, self.headers,
                self.server_state.default_headers,
            )
        except Exception:  # a shortcut must never cost a request: uvicorn and the app answer it as ever
            if not _REFUSAL_FAILED[0]:
                _REFUSAL_FAILED[0] = True
                log.exception("the protocol's fast 429 failed; the app answers instead (logged once)")
            return False
        if not isinstance(response, bytes):
            if response is not None:  # let through: the app sees its Gate, or its end closes it
                self.scope[GATE] = self._gate = response
            return False
        self.cycle = ANSWERED  # type: ignore[assignment]
        self.transport.write(response)
        self.on_response_complete()
        self.refusal.holds.hold(self.loop, self.flow, self.transport)
        return True

    def on_message_complete(self) -> None:
        self._body_pending, self._message_ended = False, True
        super().on_message_complete()
        if self._deadline_for == "leftover body":  # the rest came in time: idle now
            self._clear_deadline()
            if self.timeout_keep_alive_task is None and not self.transport.is_closing():
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

    def on_response_complete(self) -> None:
        self._pass_gate()
        super().on_response_complete()  # arms the keep-alive timer, or starts a pipelined request
        if self.transport.is_closing() or not self._idle():
            return
        if self._body_pending:
            self._set_deadline("leftover body")
        elif self._head_begun:  # part of the next request is in: its clock starts now
            self._unset_keepalive_if_required()
            self._head_since = self.loop.time()
            if self._head_bytes > self.max_head_bytes:
                self._refuse_large_head()
            else:
                self._set_deadline("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear_deadline()
        self._pass_gate()
        super().connection_lost(exc)

    def _pass_gate(self) -> None:
        """The request let through a full-queue check has ended (answered, or its client left)."""
        if self._gate is not None:
            self._gate.passed()
            self._gate = None

    def _idle(self) -> bool:
        """No request is being served (none yet, or the last one answered)."""
        return self.cycle is None or self.cycle.response_complete

    def _set_deadline(self, what: str, at: float | None = None) -> None:
        """Arm the deadline for `what` (now plus its timeout, or `at`), unless it already runs."""
        if self._deadline_for == what:
            return  # trickled bytes don't extend it
        self._clear_deadline()
        if at is None:
            at = self.loop.time() + (self.header_timeout if what == "headers" else self.body_timeout)
        self._deadline = self.loop.call_at(at, self._deadline_passed)
        self._deadline_for = what

    def _clear_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._deadline_for = None

    def _deadline_passed(self) -> None:
        what = self._deadline_for
        self._deadline = self._deadline_for = None
        if self.transport.is_closing():
            return
        log.debug("closing %s: %s not received in time", self.client, what)
        if what == "headers" and self._head_begun:
            self._refuse(408, "header_timeout", f"request headers were not received within {self.header_timeout:g} s")
        else:
            self.transport.close()

    def _refuse_large_head(self) -> None:
        self._refuse(431, "request_headers_too_large", f"request headers exceed {self.max_head_bytes} bytes")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer a request whose head never came in whole (OpenAI's error shape, like every answer),
        and close the connection."""
        self._clear_deadline()
        body = dumps(error_body(message, "invalid_request_error", code=code))
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()


_REFUSAL_FAILED = [False]  # whether the protocol's fast 429 ever raised (logged the first time only)


class _Answered:
    """Stands in for uvicorn's request cycle after the protocol answered a request itself: complete,
    so the rest of its body is dropped and the next request starts as after any answer."""

    response_complete = True
    disconnected = False
    keep_alive = True
    message_event = SimpleNamespace(set=lambda: None)


ANSWERED = _Answered()


def protocol_class(
    header_timeout: float, body_timeout: float, refusal: FastRefusal | None = None
) -> type[HeaderTimeoutProtocol]:
    """uvicorn builds one protocol per connection from a class; this one carries the timeouts and
    the app's fast 429 (None: every request goes to the app)."""
    return type(
        "HeaderTimeoutProtocol",
        (HeaderTimeoutProtocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout, "refusal": refusal},
    )


class DrainingServer(uvicorn.Server):
    """SIGTERM: mark not-ready, stop accepting, finish in-flight requests, exit 0.

    Also bounds the TLS handshake (`handshake_timeout`): uvicorn calls `loop.create_server`
    without `ssl_handshake_timeout`, so it is added for that one call.
    """

    def __init__(self, config: uvicorn.Config, app_state, handshake_timeout: float | None = None):
        super().__init__(config)
        self.app_state = app_state
        self.handshake_timeout = handshake_timeout

    def handle_exit(self, sig, frame):
        self.app_state.draining = True
        if sig == signal.SIGTERM:
            self.should_exit = True  # not re-raised afterwards, so the exit code is 0
            return
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        if self.config.ssl is None or self.handshake_timeout is None:
            await super().startup(sockets)
            return
        try:
            loop.create_server = functools.partial(  # type: ignore[method-assign]
                loop.create_server, ssl_handshake_timeout=self.handshake_timeout
            )
        except AttributeError:  # an event loop without instance attributes (uvloop)
            log.warning("TLS handshakes keep the event loop's own timeout")
            await super().startup(sockets)
            return
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server


def uvicorn_config(settings: Settings, app) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(
            settings.header_timeout, settings.body_timeout,
            None if isinstance(app, str) else FastRefusal(app.state, settings.refusal_pause),
        ),
        ws="none",  # the app serves no websockets; an upgrade must not leave our protocol
        timeout_keep_alive=settings.idle_timeout,  # type: ignore[arg-type]  # a float works
        ssl_keyfile=settings.ssl_keyfile,
        ssl_certfile=settings.ssl_certfile,
        log_config=None,
        access_log=False,
        # 0 keeps its old meaning here: no limit.
        timeout_graceful_shutdown=settings.graceful_timeout or None,  # type: ignore[arg-type]
    )


def run_server(settings: Settings) -> None:
    quiet_third_parties()

    from embedserve.api.app import create_app
    from embedserve.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)

    if settings.ray:  # replicas of this whole server under Ray Serve (deploy/ray_serve.py)
        from embedserve.api.auth import KeyStore

        KeyStore(settings)  # a bad key file stops start-up here, not in every replica
        try:
            from embedserve.deploy.ray_serve import run_ray
        except ImportError as exc:
            log.error("--ray needs Ray Serve: pip install 'embedserve[ray]' (%s)", exc)
            sys.exit(1)
        run_ray(settings)
        return

    from embedserve.processes import resolve_api_processes, run_processes

    front_ends = resolve_api_processes(settings)
    if front_ends > 1:
        from embedserve.api.auth import KeyStore

        KeyStore(settings)  # a bad key file stops start-up here, not in every front-end over and over
        run_processes(settings, front_ends)
        return

    failed: list[Exception] = []

    def on_load_failure(exc: Exception) -> None:
        failed.append(exc)
        server.should_exit = True

    app = create_app(settings, on_load_failure=on_load_failure)
    server = DrainingServer(uvicorn_config(settings, app), app.state, handshake_timeout=settings.header_timeout)
    server.run()
    if failed:
        sys.exit(1)

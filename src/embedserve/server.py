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
from collections.abc import MutableMapping

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

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


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol plus deadlines for a client that owes the server bytes.

    * Headers: armed when the connection opens and when the first bytes of a later request
      arrive, cancelled once h11 has parsed the request line and headers. When it fires, a
      client that had sent part of a request gets a 408 with `Connection: close`; one that has
      sent nothing (a silent new connection) is just closed, since a 408 it did not ask for
      could be read as the answer to the request it is about to send.
    * Leftover body: a response sent before the body was read (401, 413 on the declared
      length) leaves uvicorn reading and discarding the rest with no timer at all, so the rest
      must arrive within `body_timeout` of the response; then the connection is closed. Once it
      has, the connection is idle and gets uvicorn's keep-alive timer (uvicorn sets none there).

    Subclasses set `header_timeout` and `body_timeout` (`protocol_class`).

    Always this protocol, never uvicorn's "auto": "auto" would pick httptools where it is
    installed, and httptools' protocol has the same gaps and none of h11's state to hook into.
    httptools is not one of our dependencies, so h11 is the parser the server always ran on.
    """

    header_timeout: float = 10.0
    body_timeout: float = 60.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for: str | None = None  # "headers" or "leftover body"
        self._request_begun = False  # bytes of a request whose headers are not complete yet

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_deadline("headers")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._check_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms the keep-alive timer; parses a pipelined request
        self._request_begun = False
        self._check_state()

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear_deadline()
        super().connection_lost(exc)

    def _check_state(self) -> None:
        """After any input or response: which deadline, if any, applies now."""
        their, ours = self.conn.their_state, self.conn.our_state
        if self.transport.is_closing():
            self._clear_deadline()
        elif their is h11.IDLE and ours is h11.IDLE:
            if self.conn.trailing_data[0]:  # part of the next request's head is in
                self._request_begun = True
                self._set_deadline("headers")
            else:  # idle between requests
                self._clear_deadline()
                if self.timeout_keep_alive_task is None:
                    self.timeout_keep_alive_task = self.loop.call_later(
                        self.timeout_keep_alive, self.timeout_keep_alive_handler
                    )
        elif their is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE):
            self._set_deadline("leftover body")
        else:
            self._clear_deadline()  # a request is being served (or the connection left HTTP/1.1)

    def _set_deadline(self, what: str) -> None:
        """Arm the deadline for `what`, unless it already runs: trickled bytes don't extend it."""
        if self._deadline_for == what:
            return
        self._clear_deadline()
        seconds = self.header_timeout if what == "headers" else self.body_timeout
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)
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
        try:
            if what == "headers" and self._request_begun:
                self._send_408()
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:
            pass  # h11 is in no state to answer: just close
        self.transport.close()

    def _send_408(self) -> None:
        body = (
            b'{"error":{"message":"request headers were not received within %g s",'
            b'"type":"invalid_request_error","param":null,"code":"header_timeout"}}' % self.header_timeout
        )
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=408, headers=headers, reason=STATUS_PHRASES[408]),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))


def protocol_class(header_timeout: float, body_timeout: float) -> type[HeaderTimeoutProtocol]:
    """uvicorn builds one protocol per connection from a class; this one carries the timeouts."""
    return type(
        "HeaderTimeoutProtocol",
        (HeaderTimeoutProtocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
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
        http=protocol_class(settings.header_timeout, settings.body_timeout),
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

    failed: list[Exception] = []

    def on_load_failure(exc: Exception) -> None:
        failed.append(exc)
        server.should_exit = True

    app = create_app(settings, on_load_failure=on_load_failure)
    server = DrainingServer(uvicorn_config(settings, app), app.state, handshake_timeout=settings.header_timeout)
    server.run()
    if failed:
        sys.exit(1)

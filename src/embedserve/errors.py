"""One error hierarchy for the whole server.

Engine, models and backends raise these; the API layer maps each class to an HTTP status
and OpenAI-shaped JSON in exactly one place (`embedserve.api.errors`). Nothing below the API
knows about HTTP beyond the `status` and `type` class attributes declared here.
"""

from __future__ import annotations


class EmbedServeError(Exception):
    """Base class. `status` is the HTTP status, `type` the OpenAI error type."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidInput(EmbedServeError):
    """The request is well-formed JSON but its content can't be served (empty input, too long)."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_input"


class BadRequest(EmbedServeError):
    """A parameter the model can't honour (e.g. more dimensions than it has)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_parameter"


class ModelNotFound(EmbedServeError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(EmbedServeError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class BodyTimeout(EmbedServeError):
    """The client did not send its whole body within --body-timeout."""

    status = 408
    type = "invalid_request_error"
    code = "body_timeout"


class Overloaded(EmbedServeError):
    """The model's queue is full: the client should retry after `retry_after` seconds."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(EmbedServeError):
    """Starting up or draining."""

    status = 503
    type = "server_error"
    code = "not_ready"


class BackendFailure(EmbedServeError):
    """Inference raised: only the requests of the failing batch get this."""

    status = 500
    type = "server_error"
    code = "inference_failed"


class ModelLoadError(EmbedServeError):
    """The weights were found but could not be loaded."""

    status = 500
    type = "server_error"
    code = "model_load_failed"


class FidelityTooLow(ModelLoadError):
    """A reduced-precision mode's vectors are too far from the fp32 reference."""

    code = "fidelity_too_low"

"""One error hierarchy for the whole server.

Engine, models and backends raise these; the API layer maps each class to an HTTP status
and OpenAI-shaped JSON in exactly one place (`embedserve.api.errors`). Nothing below the API
knows about HTTP beyond the `status` and `type` class attributes declared here.
"""

from __future__ import annotations

import random


class EmbedServeError(Exception):
    """Base class. `status` is the HTTP status, `type` the OpenAI error type.

    `retry_after` (seconds), when set, becomes a Retry-After header: the state is temporary.
    """

    status = 500
    type = "server_error"
    code: str | None = None
    retry_after: int | None = None

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after: int | None = None
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None


class Unauthorized(EmbedServeError):
    """No API key, or one the server does not know (OpenAI's answer to a bad key)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(EmbedServeError):
    """A valid key without the scope the route declares."""

    status = 403
    type = "invalid_request_error"
    code = "insufficient_scope"


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


class WrongTask(BadRequest):
    """The model can't do what the route asks (e.g. sparse weights from a dense-only model)."""

    code = "model_task_unsupported"

    def __init__(self, model: str, wanted: str, tasks: list[str]):
        super().__init__(
            f"model '{model}' does not do {wanted}: its tasks are {', '.join(tasks) or 'none'}", param="model"
        )


class ModelNotFound(EmbedServeError):
    """No model by that name here. `detail` (for the server log only) may hold paths."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    detail: str | None = None


class JobNotFound(EmbedServeError):
    """No fine-tuning job by that id."""

    status = 404
    type = "invalid_request_error"
    code = "job_not_found"


class FileNotFound(EmbedServeError):
    """No uploaded file by that id (POST /v1/files)."""

    status = 404
    type = "invalid_request_error"
    code = "file_not_found"


class PayloadTooLarge(EmbedServeError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class BodyTimeout(EmbedServeError):
    """The client did not send its whole body within --body-timeout."""

    status = 408
    type = "invalid_request_error"
    code = "body_timeout"


class TooManyTokens(PayloadTooLarge):
    """The request's inputs hold more tokens than --max-request-tokens."""

    code = "too_many_tokens"


class Overloaded(EmbedServeError):
    """The model's queue is full: the client should retry after `retry_after` seconds.

    Also `retry-after-ms` (which OpenAI's API sends and its SDKs read first), drawn between half
    and one and a half times that: clients refused in the same instant come back spread out,
    not as one wave that overloads the queue again.
    """

    status = 429
    type = "rate_limit_error"
    code = "queue_full"
    retry_after = 1

    def headers(self) -> dict[str, str]:
        spread = random.randint(self.retry_after * 500, self.retry_after * 1500)
        return {"Retry-After": str(self.retry_after), "retry-after-ms": str(spread)}


class Conflict(EmbedServeError):
    """The request contradicts the server's state: a name already taken, a job already finished."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class TooManyJobs(Overloaded):
    """--max-train-jobs fine-tuning jobs are running already: retry once one has finished."""

    code = "too_many_jobs"
    retry_after = 30


class TrainingDisabled(BadRequest):
    """Fine-tuning needs --models-dir, where the trained models go and are served from."""

    code = "training_disabled"


class NotReady(EmbedServeError):
    """No model can answer now, but one will: starting up, loading, unloaded, restarting, draining."""

    status = 503
    type = "server_error"
    code = "not_ready"
    retry_after = 1


class BodyLost(NotReady):
    """A Ray Serve replica got a request whose body never came whole: Ray's proxy retried it here after
    the replica it first went to died having taken (part of) the body. It never ran: send it again."""

    code = "request_body_lost"


class RequestTimeout(NotReady):
    """Queue wait plus inference took longer than --request-timeout; the work left the queue."""

    code = "request_timeout"


class BackendFailure(EmbedServeError):
    """Inference raised: only the requests of the failing batch get this."""

    status = 500
    type = "server_error"
    code = "inference_failed"


class ModelLoadError(EmbedServeError):
    """The weights were found but could not be loaded (TEI answers a failed dependency so: 424).

    Raised to a request, the message names the model only; the details (paths, the
    library's own error) go to the server log.
    """

    status = 424
    type = "invalid_request_error"
    code = "model_load_failed"


class ModelTooLarge(EmbedServeError):
    """Loading the model would take the request-loaded models past --max-models-memory-mib."""

    status = 507
    type = "server_error"
    code = "insufficient_memory"


class HubTimeout(EmbedServeError):
    """The Hugging Face Hub did not answer within --hub-timeout."""

    status = 504
    type = "server_error"
    code = "hub_timeout"
    retry_after = 5


class FidelityTooLow(ModelLoadError):
    """A reduced-precision mode's vectors are too far from the fp32 reference."""

    code = "fidelity_too_low"


def shown(value: str, limit: int = 100) -> str:
    """A client's string as our messages quote it: cut to `limit` characters, control characters
    and unpaired surrogates escaped, so no message can be too long, multi-line or unrenderable."""
    cut = value if len(value) <= limit else value[:limit] + "..."
    if not cut.isprintable() or not cut.isascii():
        cut = cut.encode("utf-8", "backslashreplace").decode("utf-8")
        cut = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut)
    return f"'{cut}'"

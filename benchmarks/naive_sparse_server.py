"""The sparse baseline: a deliberately ordinary SPLADE server, as most hand-rolled ones are.

The sparse counterpart of naive_server.py: a FastAPI app whose sync route calls
`SparseEncoder.encode()` on each request's inputs, with no cross-request batching, no queue
bound, and FastAPI's default JSON response. It answers Text Embeddings Inference's
`POST /embed_sparse` shape, as embedserve does: request `{"inputs": str | [str, ...]}`, answer
per input its non-zero terms `[{"index": id, "value": w}, ...]` (ids ascending). Nothing here
is tuned on purpose.

    python benchmarks/naive_sparse_server.py --port 8110            # the installed SPLADE-tiny
    python benchmarks/naive_sparse_server.py --model-path /some/splade/folder
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never reach for the Hub

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sentence_transformers import SparseEncoder


class SparseRequest(BaseModel):
    inputs: str | list[str]
    truncate: bool | None = None  # accepted for TEI compatibility; encode() always truncates
    model: str | None = None


def default_model_path() -> str:
    """The SPLADE-tiny folder shipped in the `cognition` package (found without importing it)."""
    spec = importlib.util.find_spec("cognition")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the 'cognition' package (SPLADE-tiny) is not installed; pass --model-path")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def create_app(model_path: str | None = None, device: str = "cpu") -> FastAPI:
    """Load the model once, at app creation, then serve it from a sync route."""
    model = SparseEncoder(model_path or default_model_path(), device=device)
    app = FastAPI(title="naive sparse baseline")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/embed_sparse")
    def embed_sparse(req: SparseRequest) -> list[list[dict]]:
        texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        if not texts:
            raise HTTPException(status_code=422, detail="inputs must not be empty")
        # One encode per request: the point of the baseline. A dense [n, vocab] tensor back.
        weights = model.encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
        out = []
        for row in weights:
            ids = row.nonzero().squeeze(-1)  # ascending
            out.append([
                {"index": i, "value": w} for i, w in zip(ids.tolist(), row[ids].tolist(), strict=True)
            ])
        return out

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8110)
    parser.add_argument("--model-path", default=None, help="default: the installed SPLADE-tiny (cognition/model)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    app = create_app(args.model_path, args.device)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

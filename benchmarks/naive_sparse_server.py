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

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never reach for the Hub

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from naive_server import serve
from retrieval_models import splade_folder
from sentence_transformers import SparseEncoder


class SparseRequest(BaseModel):
    inputs: str | list[str]
    truncate: bool | None = None  # accepted for TEI compatibility; encode() always truncates
    model: str | None = None


def create_app(model_path: str | None = None, device: str = "cpu") -> FastAPI:
    """Load the model once, at app creation, then serve it from a sync route."""
    model = SparseEncoder(model_path or str(splade_folder()), device=device)
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
    serve(create_app, __doc__.splitlines()[0], port=8110, model_help="default: the installed SPLADE-tiny (cognition/model)")


if __name__ == "__main__":
    main()

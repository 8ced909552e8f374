"""The rerank baseline: a deliberately ordinary cross-encoder server, as most hand-rolled ones are.

The rerank counterpart of naive_server.py: a FastAPI app whose sync route calls
`CrossEncoder.predict()` on each request's (query, document) pairs, with no cross-request
batching, no queue bound, and FastAPI's default JSON response. It answers Infinity's
`POST /rerank` shape, as embedserve does: `{"query", "documents", "top_n"?}` ->
`{"results": [{"index", "relevance_score"}], ...}`, best first. Nothing here is tuned on purpose.

    python benchmarks/naive_rerank_server.py --port 8120 --model-path /some/cross-encoder
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never reach for the Hub

from fastapi import FastAPI, HTTPException
from naive_server import serve
from pydantic import BaseModel
from sentence_transformers import CrossEncoder


class RerankRequest(BaseModel):
    query: str
    documents: list[str]
    top_n: int | None = None
    model: str | None = None


def create_app(model_path: str | None = None, device: str = "cpu") -> FastAPI:
    """Load the model once, at app creation, then serve it from a sync route."""
    if not model_path:
        raise SystemExit("--model-path is required: a cross-encoder folder")
    model = CrossEncoder(model_path, device=device)
    app = FastAPI(title="naive rerank baseline")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/rerank")
    def rerank(req: RerankRequest) -> dict:
        if not req.documents:
            raise HTTPException(status_code=422, detail="documents must not be empty")
        scores = model.predict([(req.query, d) for d in req.documents])  # one predict per request
        order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[: req.top_n]
        return {
            "object": "rerank",
            "results": [{"index": i, "relevance_score": float(scores[i])} for i in order],
            "model": req.model or model_path,
        }

    return app


if __name__ == "__main__":
    serve(create_app, "naive CrossEncoder.predict rerank baseline", port=8120, model_help="cross-encoder folder")

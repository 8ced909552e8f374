"""Model families end to end on tiny real models: prefixes and length limits as a user sees them.

Tiny random-weight BERT / XLM-RoBERTa sentence-transformers folders are built on disk
(tests/support/tiny_models.py) and served in-process by the real app: `create_app` with the
real TorchBackend loading code, the real resolver (a `models_dir` with `org--name` folders,
or a folder path), the real pool and service. Each served vector is compared with what
`SentenceTransformer(folder).encode(prefix + text)` gives, and the texts and token ids that
reached the tokenizer are recorded on the way.

`input_type` is exercised through the service (the engine API every route calls); the HTTP
tests check that /v1/embeddings passes it through.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from embedserve.api.app import create_app, default_backend_factory
from embedserve.settings import Settings
from tests.support.tiny_models import (
    build_bge_en,
    build_bge_m3,
    build_e5,
    build_generic,
    build_nomic,
    build_xlm_roberta_model,
    token_id,
)

pytestmark = pytest.mark.integration

BGE_QUERY = "Represent this sentence for searching relevant passages: "
TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "a cat and a dog"]
LONG_TEXT = "hello world " * 400  # 800 words: more than 512 tokens for every tiny model
VERY_LONG_TEXT = "hello world " * 5000  # 10,000 words: more than 8192 tokens

# Served from the models folder under Hub-style ids (folder "org--name").
E5 = "intfloat/e5-small-v2"  # no max_seq_length declared; 1024 position embeddings
E5_DECLARED = "intfloat/e5-base-v2"  # declares max_seq_length 128
E5_OWN_PROMPTS = "intfloat/e5-large-v2"  # declares nomic-style prompts of its own
E5_DEFAULT_PROMPT = "intfloat/multilingual-e5-small"  # own prompts + default_prompt_name
BGE_EN = "BAAI/bge-small-en-v1.5"
BGE_M3 = "BAAI/bge-m3"  # XLM-R, 8194 position embeddings, no max_seq_length declared
GENERIC = "acme/tiny-encoder"
# Served by folder path; requested by the folder name (the path's last part is an alias).
NOMIC = "nomic-ai--nomic-embed-text-v1.5"
NOMIC_ARCH = "acme--custom-encoder"  # neutral name, config.json says NomicBertModel


def _folder(root: Path, model_id: str) -> Path:
    return root / model_id.replace("/", "--")


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_e5(root, "intfloat--e5-small-v2")
    build_e5(root, "intfloat--e5-base-v2", max_seq_length=128)
    build_e5(root, "intfloat--e5-large-v2", prompts={"query": "search_query: ", "document": "search_document: "})
    build_e5(
        root,
        "intfloat--multilingual-e5-small",
        prompts={"query": "query: ", "document": "passage: ", "clustering": "search_document: "},
        default_prompt_name="clustering",
    )
    build_bge_en(root, "BAAI--bge-small-en-v1.5")
    build_bge_m3(root, "BAAI--bge-m3")
    build_generic(root, "acme--tiny-encoder")
    build_nomic(root, NOMIC)
    build_generic(root, NOMIC_ARCH, architectures=["NomicBertModel"])
    return root


class RecordingFactory:
    """The app's own backend factory (real TorchBackend), noting what reaches each tokenizer."""

    def __init__(self, settings: Settings):
        self._real = default_backend_factory(settings)
        self.calls: dict[str, list[tuple[list[str], list[list[int]]]]] = {}

    def __call__(self, path: Path):
        backend = self._real(path)
        tokenize = backend.tokenize
        log = self.calls.setdefault(Path(path).name, [])

        def recording_tokenize(texts, *, truncate):
            ids = tokenize(texts, truncate=truncate)
            log.append((list(texts), [list(s) for s in ids]))
            return ids

        backend.tokenize = recording_tokenize
        return backend

    def last(self, folder_name: str) -> tuple[list[str], list[list[int]]]:
        return self.calls[folder_name][-1]


def wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        if client.app.state.load_error:
            raise AssertionError(f"models failed to load: {client.app.state.load_error}")
        time.sleep(0.02)
    raise AssertionError(f"app not ready: {client.get('/ready').json()}")


def tiny_settings(tmp_dir: Path, **overrides) -> Settings:
    """Settings for these tests: the torch backend on CPU, 2 threads, caches under `tmp_dir`.

    `backend=None` keeps the server's default backend.
    """
    values = {"device": "cpu", "threads": 2, "backend": "torch", "cache_dir": tmp_dir / "cache"} | overrides
    fields = Settings.model_fields
    return Settings(
        **{k: v for k, v in values.items() if v is not None and (k in fields or k in overrides)}
    )


@contextmanager
def serve(settings: Settings, recorder: RecordingFactory | None = None) -> Iterator[TestClient]:
    app = create_app(settings, backend_factory=recorder)
    with TestClient(app) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def served(models_root) -> Iterator[tuple[TestClient, RecordingFactory]]:
    """One app serving every tiny model, loaded at start (none on demand)."""
    settings = tiny_settings(
        models_root,
        models=(
            E5,
            E5_DECLARED,
            E5_OWN_PROMPTS,
            E5_DEFAULT_PROMPT,
            BGE_EN,
            BGE_M3,
            GENERIC,
            str(models_root / NOMIC),
            str(models_root / NOMIC_ARCH),
        ),
        models_dir=models_root,
        load_on_demand=False,
    )
    recorder = RecordingFactory(settings)
    with serve(settings, recorder) as client:
        yield client, recorder


@pytest.fixture
def client(served) -> TestClient:
    return served[0]


@pytest.fixture
def recorder(served) -> RecordingFactory:
    return served[1]


_references: dict[Path, object] = {}


def reference(folder: Path):
    from sentence_transformers import SentenceTransformer

    if folder not in _references:
        _references[folder] = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    return _references[folder]


def embed(client: TestClient, model: str, texts: list[str], input_type=None):
    """`EmbeddingService.embed` on the app's own event loop (what every route calls)."""
    service = client.app.state.service
    return client.portal.call(functools.partial(service.embed, model, texts, input_type=input_type))


def post(client: TestClient, **body) -> dict:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def encode_reference(folder: Path, texts: list[str]) -> np.ndarray:
    """sentence-transformers' own vectors for exactly these texts (its default prompt switched off)."""
    return reference(folder).encode(texts, prompt="", convert_to_numpy=True)


def assert_matches_reference(
    folder: Path, served: np.ndarray, texts: list[str], prefix: str, *, exclusive: bool = True, exact: bool = True
) -> None:
    """Served vectors are the model's own for `prefix + text` (and, if `exclusive`, for no other prefix).

    exact=False: the default mode's promise only (cosine >= 0.9999), which bf16 may keep."""
    expected = encode_reference(folder, [prefix + t for t in texts])
    assert served.shape == expected.shape
    assert cosines(served, expected).min() >= 0.9999, cosines(served, expected)
    if exact:
        np.testing.assert_allclose(served, expected, atol=1e-4)
    if not exclusive:
        return
    for other in {"", "query: ", "passage: ", "search_query: ", "search_document: ", BGE_QUERY} - {prefix}:
        wrong = encode_reference(folder, [other + t for t in texts])
        assert cosines(served, wrong).min() < 0.999, f"served vectors also match prefix {other!r}"


# ---- E5 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_type, prefix, word", [("query", "query: ", "query"), ("document", "passage: ", "passage")])
def test_e5_prefixes_reach_the_tokenizer(client, recorder, models_root, input_type, prefix, word):
    folder = _folder(models_root, E5)
    result = embed(client, E5, TEXTS, input_type)
    texts, ids = recorder.last(folder.name)
    assert texts == [prefix + t for t in TEXTS]
    cls, word_id, colon = token_id(folder, "[CLS]"), token_id(folder, word), token_id(folder, ":")
    assert all(seq[:3] == [cls, word_id, colon] for seq in ids), ids
    plain = embed(client, E5, TEXTS)
    assert result.prompt_tokens == plain.prompt_tokens + 2 * len(TEXTS)
    assert_matches_reference(folder, result.vectors, TEXTS, prefix)


def test_e5_without_input_type_gets_no_prefix(client, recorder, models_root):
    folder = _folder(models_root, E5)
    result = embed(client, E5, TEXTS)
    assert recorder.last(folder.name)[0] == TEXTS
    assert_matches_reference(folder, result.vectors, TEXTS, "")


def test_e5_query_and_document_vectors_differ(client):
    query = embed(client, E5, TEXTS, "query").vectors
    document = embed(client, E5, TEXTS, "document").vectors
    assert cosines(query, document).max() < 0.999


def test_e5_sequence_limit_is_512_when_the_model_declares_none(client):
    body = post(client, model=E5, input=LONG_TEXT)
    assert body["usage"]["prompt_tokens"] == 512
    assert len(body["data"][0]["embedding"]) == 32
    assert embed(client, E5, [LONG_TEXT], "query").prompt_tokens == 512  # still 512 with a prefix


def test_e5_long_input_is_the_truncated_512_tokens(client, recorder, models_root):
    folder = _folder(models_root, E5)
    result = embed(client, E5, [LONG_TEXT], "query")
    ids = recorder.last(folder.name)[1][0]
    assert len(ids) == 512 and ids[-1] == token_id(folder, "[SEP]")
    st = reference(folder)
    ref_ids = st.tokenizer("query: " + LONG_TEXT, truncation=True, max_length=512)["input_ids"]
    assert ids == ref_ids
    st_max = st.max_seq_length
    st.max_seq_length = 512
    try:
        # (over 510 tokens of text, the 2 prefix tokens hardly move a mean-pooled vector)
        assert_matches_reference(folder, result.vectors, [LONG_TEXT], "query: ", exclusive=False)
    finally:
        st.max_seq_length = st_max


def test_a_declared_max_seq_length_wins_over_the_family(client):
    assert post(client, model=E5_DECLARED, input=LONG_TEXT)["usage"]["prompt_tokens"] == 128


def test_model_own_prompts_beat_the_family(client, recorder, models_root):
    folder = _folder(models_root, E5_OWN_PROMPTS)
    query = embed(client, E5_OWN_PROMPTS, TEXTS, "query")
    assert recorder.last(folder.name)[0] == ["search_query: " + t for t in TEXTS]
    assert_matches_reference(folder, query.vectors, TEXTS, "search_query: ")
    document = embed(client, E5_OWN_PROMPTS, TEXTS, "document")
    assert recorder.last(folder.name)[0] == ["search_document: " + t for t in TEXTS]
    assert_matches_reference(folder, document.vectors, TEXTS, "search_document: ")
    # and the model's own prompts agree with sentence-transformers' prompt_name handling
    st = reference(folder)
    np.testing.assert_allclose(query.vectors, st.encode(TEXTS, prompt_name="query"), atol=1e-4)


def test_model_default_prompt_applies_without_input_type(client, recorder, models_root):
    folder = _folder(models_root, E5_DEFAULT_PROMPT)
    result = embed(client, E5_DEFAULT_PROMPT, TEXTS)
    assert recorder.last(folder.name)[0] == ["search_document: " + t for t in TEXTS]
    # sentence-transformers applies the default prompt to a plain encode() as well
    np.testing.assert_allclose(result.vectors, reference(folder).encode(TEXTS), atol=1e-4)
    assert_matches_reference(folder, embed(client, E5_DEFAULT_PROMPT, TEXTS, "query").vectors, TEXTS, "query: ")


# ---- nomic ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "input_type, prefix, word", [("query", "search_query: ", "query"), ("document", "search_document: ", "document")]
)
@pytest.mark.parametrize("name", [NOMIC, NOMIC_ARCH])
def test_nomic_prefixes_reach_the_tokenizer(client, recorder, models_root, name, input_type, prefix, word):
    folder = models_root / name
    result = embed(client, name, TEXTS, input_type)
    texts, ids = recorder.last(name)
    assert texts == [prefix + t for t in TEXTS]
    expected_start = [token_id(folder, t) for t in ("[CLS]", "search", "_", word, ":")]
    assert all(seq[:5] == expected_start for seq in ids), ids
    assert result.prompt_tokens == embed(client, name, TEXTS).prompt_tokens + 4 * len(TEXTS)
    assert_matches_reference(folder, result.vectors, TEXTS, prefix)


def test_nomic_family_limit_is_capped_by_the_position_embeddings(client):
    # family says 8192; the tiny BERT has 1024 positions: the user gets 1024 tokens, not an error
    assert post(client, model=NOMIC, input=LONG_TEXT)["usage"]["prompt_tokens"] == 802
    body = post(client, model=NOMIC, input=LONG_TEXT * 2)
    assert body["usage"]["prompt_tokens"] == 1024


# ---- BGE v1.5 English -----------------------------------------------------------------------


def test_bge_en_query_instruction_and_no_document_prefix(client, recorder, models_root):
    folder = _folder(models_root, BGE_EN)
    query = embed(client, BGE_EN, TEXTS, "query")
    assert recorder.last(folder.name)[0] == [BGE_QUERY + t for t in TEXTS]
    assert_matches_reference(folder, query.vectors, TEXTS, BGE_QUERY)
    document = embed(client, BGE_EN, TEXTS, "document")
    assert recorder.last(folder.name)[0] == TEXTS
    assert_matches_reference(folder, document.vectors, TEXTS, "")
    assert query.prompt_tokens == document.prompt_tokens + 8 * len(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(query.vectors, axis=1), 1.0, atol=1e-5)  # the model normalises
    assert post(client, model=BGE_EN, input=LONG_TEXT)["usage"]["prompt_tokens"] == 512


# ---- BGE-M3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("input_type", ["query", "document", None])
def test_bge_m3_gets_no_prefix(client, recorder, models_root, input_type):
    folder = _folder(models_root, BGE_M3)
    result = embed(client, BGE_M3, TEXTS, input_type)
    texts, ids = recorder.last(folder.name)
    assert texts == TEXTS
    assert all(seq[0] == token_id(folder, "<s>") and seq[1] != token_id(folder, "\u2581query") for seq in ids)
    assert_matches_reference(folder, result.vectors, TEXTS, "")


def test_bge_m3_serves_8192_tokens_when_the_model_declares_none(client, recorder, models_root):
    folder = _folder(models_root, BGE_M3)
    body = post(client, model=BGE_M3, input=VERY_LONG_TEXT)
    assert body["usage"]["prompt_tokens"] == 8192
    ids = recorder.last(folder.name)[1][0]
    assert len(ids) == 8192 and ids[0] == token_id(folder, "<s>") and ids[-1] == token_id(folder, "</s>")
    vector = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
    assert np.isfinite(vector).all() and abs(np.linalg.norm(vector) - 1.0) < 1e-4


# ---- a model of no known family -------------------------------------------------------------


@pytest.mark.parametrize("input_type", ["query", "document", None])
def test_unknown_model_gets_no_prefix(client, recorder, models_root, input_type):
    folder = _folder(models_root, GENERIC)
    result = embed(client, GENERIC, TEXTS, input_type)
    assert recorder.last(folder.name)[0] == TEXTS
    assert_matches_reference(folder, result.vectors, TEXTS, "")


def test_unknown_model_keeps_its_own_limit(client):
    # no family limit: sentence-transformers' own (the 1024 position embeddings) applies
    assert post(client, model=GENERIC, input=LONG_TEXT)["usage"]["prompt_tokens"] == 802
    assert post(client, model=GENERIC, input=LONG_TEXT * 2)["usage"]["prompt_tokens"] == 1024


# ---- through the HTTP route -----------------------------------------------------------------


def test_plain_http_request_matches_the_unprefixed_model(client, models_root):
    body = post(client, model=E5, input=TEXTS)
    vectors = np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert_matches_reference(_folder(models_root, E5), vectors, TEXTS, "")


@pytest.mark.parametrize(
    "model, input_type, prefix",
    [(E5, "query", "query: "), (E5, "document", "passage: "), (NOMIC, "query", "search_query: "), (BGE_M3, "query", "")],
)
def test_http_input_type(client, models_root, model, input_type, prefix):
    body = post(client, model=model, input=TEXTS, input_type=input_type)
    vectors = np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32)
    folder = models_root / NOMIC if model == NOMIC else _folder(models_root, model)
    assert_matches_reference(folder, vectors, TEXTS, prefix)
    plain = post(client, model=model, input=TEXTS)
    assert body["usage"]["prompt_tokens"] - plain["usage"]["prompt_tokens"] == {
        "query: ": 2,
        "passage: ": 2,
        "search_query: ": 4,
        "": 0,
    }[prefix] * len(TEXTS)


# ---- limits in other set-ups ----------------------------------------------------------------


def test_e5_too_long_without_truncation_is_422_naming_512(models_root):
    settings = tiny_settings(models_root, models=(E5,), models_dir=models_root, truncate=False)
    with serve(settings) as client:
        response = client.post("/v1/embeddings", json={"model": E5, "input": LONG_TEXT})
        assert response.status_code == 422, response.text
        assert "512" in response.json()["error"]["message"]
        assert client.post("/v1/embeddings", json={"model": E5, "input": "hello world"}).status_code == 200


def test_a_model_loaded_on_demand_gets_its_family_too(models_root):
    settings = tiny_settings(models_root, models=(GENERIC,), models_dir=models_root)
    recorder = RecordingFactory(settings)
    with serve(settings, recorder) as client:
        assert post(client, model=E5, input=LONG_TEXT)["usage"]["prompt_tokens"] == 512
        embed(client, E5, TEXTS, "query")
        assert recorder.last(_folder(models_root, E5).name)[0] == ["query: " + t for t in TEXTS]


def test_the_default_backend_applies_the_family_too(models_root, tmp_path):
    # whatever backend the server picks by default (torch bf16 or ONNX Runtime fp32 on CPU), the
    # family's prefixes and length limit are the pool's, applied the same way
    settings = tiny_settings(tmp_path, models=(E5,), models_dir=models_root, backend=None)
    with serve(settings) as client:
        body = post(client, model=E5, input=LONG_TEXT)
        assert body["usage"]["prompt_tokens"] == 512
        result = embed(client, E5, TEXTS, "query")
        assert result.prompt_tokens == embed(client, E5, TEXTS).prompt_tokens + 2 * len(TEXTS)
        assert_matches_reference(_folder(models_root, E5), result.vectors, TEXTS, "query: ", exact=False)


@pytest.mark.parametrize("name", ["acme--bge-m3-514", "acme--xlmr-encoder"])
def test_xlm_roberta_limit_is_capped_by_its_usable_positions(tmp_path_factory, name):
    root = tmp_path_factory.mktemp("xlmr")
    folder = build_xlm_roberta_model(root / name, max_position_embeddings=514)
    settings = tiny_settings(root, models=(str(folder),))
    with serve(settings) as client:
        response = client.post("/v1/embeddings", json={"input": LONG_TEXT})
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens"] == 512


# ---- the tiny models themselves -------------------------------------------------------------


@pytest.mark.parametrize(
    "builder, options, pooling, normalize, max_seq_length",
    [
        (build_e5, {}, "mean", False, 1024),  # undeclared: sentence-transformers caps at the positions
        (build_e5, {"max_seq_length": 64}, "mean", False, 64),
        (build_e5, {"tokenizer_max_length": 256}, "mean", False, 256),
        (build_nomic, {}, "mean", False, 1024),
        (build_bge_en, {"max_seq_length": 512}, "cls", True, 512),
        (build_bge_m3, {"max_seq_length": 8192}, "cls", True, 8192),
        (build_bge_m3, {"tokenizer_max_length": 8192}, "cls", True, 8192),
        (build_generic, {"pooling": "max"}, "max", False, 1024),
    ],
)
def test_each_tiny_model_loads_with_the_torch_backend(tmp_path, builder, options, pooling, normalize, max_seq_length):
    from embedserve.backends.torch_backend import TorchBackend

    folder = builder(tmp_path, **options)
    backend = TorchBackend(folder, device="cpu", threads=1)
    info = backend.info
    assert (info.dimension, info.pooling, info.normalize, info.max_seq_length) == (
        32,
        pooling,
        normalize,
        max_seq_length,
    )
    assert info.prompts == {"query": "", "document": ""}  # sentence-transformers 6's defaults
    assert 300 < info.vocab_size < 500
    # the prefix words are whole tokens
    if builder is build_bge_m3:
        words = ["\u2581query", ":", "\u2581hello"]
        ends = ("<s>", "</s>")
    else:
        words = ["query", ":", "hello"]
        ends = ("[CLS]", "[SEP]")
    expected = [token_id(folder, ends[0]), *(token_id(folder, w) for w in words), token_id(folder, ends[1])]
    assert backend.tokenize(["query: hello"], truncate=True) == [expected]


def test_tiny_model_prompts_are_what_sentence_transformers_reads(tmp_path):
    from embedserve.backends.torch_backend import TorchBackend

    prompts = {"query": "search_query: ", "document": "search_document: "}
    folder = build_e5(tmp_path, prompts=prompts, default_prompt_name="query")
    info = TorchBackend(folder, device="cpu", threads=1).info
    assert info.prompts == prompts and info.default_prompt_name == "query"

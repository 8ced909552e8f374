"""What `MultiVectorEncoder.encode_query` / `encode_document` (sentence-transformers 6.3) compute,
re-expressed as "token ids in -> one transformer forward -> per-token head", without calling
`MultiVectorEncoder.encode*`.

Steps, with the saved file/key that controls each:

1. prompt    config_sentence_transformers.json `prompts[task]` ("[Q] " / "[D] "), prepended as text.
             ids = tokenizer(prompt + text, add_special_tokens=True, truncation=True, max_length=cap)
2. cap       query:    sentence_bert_config.json `query_expansion.length` when strategy "fixed",
                       else `query_length` (for "min": max(query_length, length));
             document: sentence_bert_config.json `document_length`;
             unset -> tokenizer_config.json `model_max_length` (transformers' "no limit" sentinel: none).
3. expansion (queries only, sentence_bert_config.json `query_expansion`): append `token` (default
             the tokenizer's mask token, else eos) until the row has `length` tokens; those positions
             get attention_mask = 1 if `attend` else 0, and are KEPT as output rows either way.
4. forward   AutoModel(input_ids, attention_mask).last_hidden_state (right padding with pad id).
5. modules   modules.json order after the Transformer:
             Dense            (<dir>/config.json + model.safetensors `linear.weight`/`linear.bias`/`residual.weight`)
                              y = act(x W^T + b) [+ x or x R^T when use_residual]
             MultiVectorMask  (<dir>/config.json) keep = attended | expansion (query);
                              minus skiplist ids when task in `skiplist_tasks`;
                              restricted to `keep_only_token_ids` when task != "query"
             Normalize        y / max(||y||_2, 1e-12) per row
6. truncate  config_sentence_transformers.json `truncate_dim` (if any): y[:, :d] then L2 again.

Run `python -m tests.support.colbert_recipe` to check it against MultiVectorEncoder on a tiny model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ColbertRecipe", "load_recipe", "token_ids", "colbert_reference", "maxsim", "mean_maxsim"]

_NO_LIMIT = 10**12  # transformers' VERY_LARGE_INTEGER is ~1e30; anything this large means "no limit"

_TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"
_TRANSFORMER_ALIASES = {_TRANSFORMER, "sentence_transformers.models.Transformer"}
_DENSE = {"sentence_transformers.base.modules.dense.Dense", "sentence_transformers.models.Dense", "pylate.models.Dense.Dense"}
_MASK = {"sentence_transformers.multi_vector_encoder.modules.multi_vector_mask.MultiVectorMask"}
_NORMALIZE = {"sentence_transformers.base.modules.normalize.Normalize", "sentence_transformers.models.Normalize"}
_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.Tanh": np.tanh,
    "torch.nn.modules.activation.ReLU": lambda x: np.maximum(x, 0),
}


def _read_json(file: Path) -> dict:
    return json.loads(file.read_text()) if file.exists() else {}


@dataclass
class ColbertRecipe:
    path: Path
    prompts: dict[str, str]
    query_length: int | None
    document_length: int | None
    query_expansion: dict | None
    expansion_id: int | None
    pad_id: int
    model_max_length: int | None
    heads: list[tuple] = field(default_factory=list)  # ("dense", W, b, act, R|None|"identity") / ("mask", cfg, skip_ids) / ("normalize",)
    truncate_dim: int | None = None
    similarity_fn_name: str = "maxsim"

    def cap(self, task: str) -> int | None:
        """The max_length ST passes to the tokenizer for `task` (None: no truncation)."""
        expansion = self.query_expansion if task == "query" else None
        if expansion is not None and expansion["strategy"] == "fixed":
            return expansion["length"]
        cap = self.query_length if task == "query" else self.document_length if task == "document" else None
        if expansion is not None and cap is not None:  # "min": the floor raises a smaller cap
            cap = max(cap, expansion["length"])
        if cap is None:
            cap = self.model_max_length
        return cap


def load_recipe(path: str | Path):
    """Read everything the recipe needs from a saved MultiVectorEncoder folder (native ST 6.x save)."""
    from transformers import AutoTokenizer

    path = Path(path)
    modules = json.loads((path / "modules.json").read_text())
    st_config = _read_json(path / "config_sentence_transformers.json")
    if st_config.get("model_type") not in (None, "MultiVectorEncoder"):
        raise NotImplementedError(f"not a native MultiVectorEncoder save: model_type={st_config.get('model_type')!r}")
    if modules[0]["type"] not in _TRANSFORMER_ALIASES:
        raise NotImplementedError(f"first module is {modules[0]['type']}")
    transformer_dir = path / modules[0]["path"]
    tf_config = _read_json(transformer_dir / "sentence_bert_config.json")
    tokenizer = AutoTokenizer.from_pretrained(str(transformer_dir))
    model_max_length = tokenizer.model_max_length
    if model_max_length is None or model_max_length >= _NO_LIMIT:
        model_max_length = None

    expansion = tf_config.get("query_expansion")
    expansion_id = None
    if expansion is not None:
        expansion = {"attend": False, "token": None, **expansion}
        if expansion["token"] is not None:
            expansion_id = tokenizer.convert_tokens_to_ids(expansion["token"])
        else:
            expansion_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.eos_token_id

    heads: list[tuple] = []
    for module in modules[1:]:
        kind, folder = module["type"], path / module["path"]
        config = _read_json(folder / "config.json")
        if kind in _DENSE:
            from safetensors.numpy import load_file

            weights = load_file(str(folder / "model.safetensors"))
            act_name = config.get("activation_function", "torch.nn.modules.activation.Tanh")
            if act_name not in _ACTIVATIONS:
                raise NotImplementedError(f"Dense activation {act_name}")
            if config.get("module_input_name", "sentence_embedding") != "token_embeddings":
                raise NotImplementedError("Dense not on token_embeddings")
            residual = None
            if config.get("use_residual"):
                residual = weights.get("residual.weight", "identity")
            heads.append(("dense", weights["linear.weight"], weights.get("linear.bias"), _ACTIVATIONS[act_name], residual))
        elif kind in _MASK:
            config = {"skiplist_words": [], "skiplist_tasks": ["document"], "keep_only_token_ids": None, **config}
            if isinstance(config["skiplist_tasks"], str):
                config["skiplist_tasks"] = [config["skiplist_tasks"]]
            skip = []
            for word in config["skiplist_words"]:  # MultiVectorMask.resolve_with_tokenizer
                tid = tokenizer.convert_tokens_to_ids(word)
                if tid == tokenizer.unk_token_id and word != tokenizer.unk_token:
                    continue  # ST drops words that are not single vocab tokens
                skip.append(tid)
            heads.append(("mask", config, np.array(skip, dtype=np.int64)))
        elif kind in _NORMALIZE:
            if config.get("module_input_name", "sentence_embedding") != "token_embeddings":
                raise NotImplementedError("Normalize not on token_embeddings")
            heads.append(("normalize",))
        else:
            raise NotImplementedError(f"module {kind} has no recipe (e.g. token pooling, Router)")

    recipe = ColbertRecipe(
        path=path,
        prompts=dict(st_config.get("prompts") or {}),
        query_length=tf_config.get("query_length"),
        document_length=tf_config.get("document_length"),
        query_expansion=expansion,
        expansion_id=expansion_id,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        model_max_length=model_max_length,
        heads=heads,
        truncate_dim=st_config.get("truncate_dim"),
        similarity_fn_name=st_config.get("similarity_fn_name") or "maxsim",
    )
    return recipe, tokenizer


def token_ids(recipe: ColbertRecipe, tokenizer, text: str, task: str) -> tuple[list[int], int, int]:
    """(ids, n_attended, n_real) for one input; ids already include any expansion tokens.

    Positions [0, n_real) are the tokenizer's ids; [n_real, len(ids)) are expansion tokens.
    Positions [0, n_attended) get attention_mask 1, the rest 0 (n_attended = len(ids) when the
    expansion is attended).
    """
    prompt = recipe.prompts.get(task) or ""
    cap = recipe.cap(task)
    kwargs = {"truncation": True, "max_length": cap} if cap is not None else {}
    ids = list(tokenizer(prompt + text, add_special_tokens=True, **kwargs)["input_ids"])
    n_real = len(ids)
    expansion = recipe.query_expansion if task == "query" else None
    if expansion is not None and n_real < expansion["length"] and recipe.expansion_id is not None:
        ids += [recipe.expansion_id] * (expansion["length"] - n_real)
    n_attended = len(ids) if expansion is not None and expansion["attend"] else n_real
    return ids, n_attended, n_real


def _apply_heads(recipe: ColbertRecipe, states: np.ndarray, ids: np.ndarray, attended: np.ndarray,
                 expansion: np.ndarray, task: str) -> np.ndarray:
    """states (T, H) of one row -> kept, projected, normalised rows (N, D)."""
    x = states.astype(np.float64)
    keep = attended.copy()
    for head in recipe.heads:
        if head[0] == "dense":
            _, w, b, act, residual = head
            y = x @ w.T.astype(np.float64)
            if b is not None:
                y = y + b
            y = act(y)
            if isinstance(residual, np.ndarray):
                y = y + x @ residual.T
            elif residual == "identity":
                y = y + x
            x = y
        elif head[0] == "mask":
            _, config, skip = head
            keep = attended | expansion if task == "query" else attended.copy()
            if (task or "document") in config["skiplist_tasks"] and len(skip):
                keep &= ~np.isin(ids, skip)
            if task != "query" and config["keep_only_token_ids"]:
                keep &= np.isin(ids, np.array(config["keep_only_token_ids"]))
        elif head[0] == "normalize":
            x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    x = x[keep]
    if recipe.truncate_dim is not None:
        x = x[:, : recipe.truncate_dim]
        x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x.astype(np.float32)


def colbert_reference(path: str | Path, texts: list[str], task: str, *, batched: bool = True) -> list[np.ndarray]:
    """Per-token vectors for `texts` as `MultiVectorEncoder.encode_{task}` returns them.

    `batched`: right-pad all inputs into one batch and run a single forward (else one forward each).
    """
    import torch
    from transformers import AutoModel

    if task not in ("query", "document"):
        raise ValueError(task)
    recipe, tokenizer = load_recipe(path)
    model = AutoModel.from_pretrained(str(recipe.path)).eval()
    rows = [token_ids(recipe, tokenizer, t, task) for t in texts]
    groups = [list(range(len(rows)))] if batched else [[i] for i in range(len(rows))]
    out: list[np.ndarray | None] = [None] * len(rows)
    for group in groups:
        width = max(len(rows[i][0]) for i in group)
        ids = np.full((len(group), width), recipe.pad_id, dtype=np.int64)
        mask = np.zeros((len(group), width), dtype=np.int64)
        expansion = np.zeros((len(group), width), dtype=bool)
        for r, i in enumerate(group):
            row, n_attended, n_real = rows[i]
            ids[r, : len(row)] = row
            mask[r, :n_attended] = 1
            expansion[r, n_real : len(row)] = True
        with torch.inference_mode():
            states = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
        states = states.float().numpy()
        for r, i in enumerate(group):
            out[i] = _apply_heads(recipe, states[r], ids[r], mask[r].astype(bool), expansion[r], task)
    return out  # type: ignore[return-value]


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """sum over query rows of max over document rows of the dot product (rows are unit vectors).

    A document with no rows scores -1e9 (ST's _EMPTY_DOCUMENT_SCORE).
    """
    if len(document) == 0:
        return -1e9
    return float((query.astype(np.float64) @ document.T.astype(np.float64)).max(axis=1).sum())


def mean_maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """maxsim / number of query rows (expansion rows included), at least 1."""
    return maxsim(query, document) / max(len(query), 1)


TEXTS = [
    "hello world",
    "",
    "What is the capital of France?",
    "the quick brown fox jumps over the lazy dog",
    "!!! ??? ... ,,, ;;; ::: --- ''' \"\"\" ((( ))) /// [] {} <> @#$%^&*~`|\\+=_",
    "a, b. c; d: e! f? (g) [h] {i} -- 'j' \"k\"",
    "Zebra-crossing at 42 Main St.: look left, look right... then cross!",
    "the river flows to the sea and the sun shines on the water on a warm summer day while the cat "
    "and the dog sleep under the old tree near the house by the road in the small city far away",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
    "[MASK] is a token; so is [Q] and [D].",
    "HELLO World",
]


def _check(path: str | Path, texts: list[str] = TEXTS, atol: float = 1e-5) -> dict:
    import torch
    from sentence_transformers import MultiVectorEncoder

    st = MultiVectorEncoder(str(path), device="cpu")
    recipe, tokenizer = load_recipe(path)
    report: dict = {}
    for task in ("query", "document"):
        encode = st.encode_query if task == "query" else st.encode_document
        st_batch = [e.float().numpy() for e in encode(texts, batch_size=64)]
        st_alone = [encode(t).float().numpy() for t in texts]
        ref_batch = colbert_reference(path, texts, task, batched=True)
        ref_alone = colbert_reference(path, texts, task, batched=False)
        worst = 0.0
        for i, text in enumerate(texts):
            shapes = {st_batch[i].shape, st_alone[i].shape, ref_batch[i].shape, ref_alone[i].shape}
            assert len(shapes) == 1, (task, text, shapes)
            for ref in (ref_batch[i], ref_alone[i]):
                for got in (st_batch[i], st_alone[i]):
                    worst = max(worst, float(np.abs(ref - got).max(initial=0.0)))
        assert worst <= atol, (task, worst)
        ids = [token_ids(recipe, tokenizer, t, task) for t in texts]
        report[task] = {
            "max_abs_diff": worst,
            "rows": [a.shape[0] for a in ref_batch],
            "ids_lengths": [len(r[0]) for r in ids],
            "attended": [r[1] for r in ids],
        }
    queries = colbert_reference(path, texts, "query")
    documents = colbert_reference(path, texts, "document")
    st_scores = st.similarity([torch.from_numpy(q) for q in queries], [torch.from_numpy(d) for d in documents]).numpy()
    # st.similarity follows the saved similarity_fn_name: "maxsim" or "meanmaxsim".
    score = mean_maxsim if recipe.similarity_fn_name == "meanmaxsim" else maxsim
    ours = np.array([[score(q, d) for d in documents] for q in queries])
    report["model_similarity_fn_name"] = recipe.similarity_fn_name
    report["model_similarity_max_abs_diff"] = float(np.abs(st_scores - ours).max())
    from sentence_transformers.util.similarity import maxsim as st_maxsim

    st_plain = st_maxsim([torch.from_numpy(q) for q in queries], [torch.from_numpy(d) for d in documents]).numpy()
    ours_plain = np.array([[maxsim(q, d) for d in documents] for q in queries])
    report["maxsim_max_abs_diff"] = float(np.abs(st_plain - ours_plain).max())
    from sentence_transformers.util.similarity import mean_maxsim as st_mean_maxsim

    st_mean = st_mean_maxsim([torch.from_numpy(q) for q in queries], [torch.from_numpy(d) for d in documents]).numpy()
    ours_mean = np.array([[mean_maxsim(q, d) for d in documents] for q in queries])
    report["meanmaxsim_max_abs_diff"] = float(np.abs(st_mean - ours_mean).max())
    assert report["model_similarity_max_abs_diff"] < 1e-4, report
    assert report["maxsim_max_abs_diff"] < 1e-4 and report["meanmaxsim_max_abs_diff"] < 1e-5, report
    return report


if __name__ == "__main__":
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # also runnable as a plain script

    from tests.support.tiny_colbert import build_colbert

    variants = {
        "default (fixed, attend=False, punctuation skiplist)": {},
        "fixed, attend=True": {"attend_to_expansion": True},
        "min, attend=False": {"expansion_strategy": "min"},
        "no skiplist, meanmaxsim": {"skiplist_words": [], "similarity_fn_name": "meanmaxsim"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, options in variants.items():
            path = build_colbert(tmp, name=f"v{len(label)}", **options)
            recipe, tokenizer = load_recipe(path)
            if not options:
                print("query ids of 'hello world':", token_ids(recipe, tokenizer, "hello world", "query"))
                print("document ids of 'a, b.':", token_ids(recipe, tokenizer, "a, b.", "document"))
                print("skiplist ids:", recipe.heads[1][2].tolist())
            report = _check(path)
            print(f"[{label}] OK")
            for task in ("query", "document"):
                print(f"  {task}: max|diff|={report[task]['max_abs_diff']:.2e} rows={report[task]['rows']} "
                      f"ids_len={report[task]['ids_lengths']} attended={report[task]['attended']}")
            print(f"  maxsim diff={report['maxsim_max_abs_diff']:.2e} meanmaxsim diff={report['meanmaxsim_max_abs_diff']:.2e} "
                  f"model.similarity ({report['model_similarity_fn_name']}) diff={report['model_similarity_max_abs_diff']:.2e}")

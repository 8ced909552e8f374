"""A model's tokenizer without its weights: what a front-end process needs of a model (issue 16).

Front-end processes tokenize and send token ids to the engine process, which holds the weights.
This backend reads only the tokenizer files of the model's folder (the folder of its
sentence-transformers Transformer module, with that module's tokenizer arguments) and takes the
rest of what it is (`ModelInfo`: the served length, the tasks) from the engine, so its ids are
the ones the engine's own backend would make: tests/unit/backends/test_tokenizer_only.py holds
it to that on the real all-MiniLM-L6-v2 and on a tiny cross-encoder.

Multi-vector models tokenize queries and documents apart (markers, query expansion) in their
head's own code: they are not served by this backend (a front-end leaves their tokenization to
the engine). Nothing here can run the network: `forward` raises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embedserve.backends.base import Backend, Batch, ModelInfo
from embedserve.backends.tokenization import HFTokenizer, HFTokenizerMethods
from embedserve.errors import ModelLoadError
from embedserve.models.families import read_json

TOKENIZED_HERE = frozenset({"sentence-transformer", "splade", "bge-m3", "cross-encoder"})  # ModelKind names


def transformer_folder(path: Path) -> tuple[Path, dict[str, Any], bool]:
    """Where a sentence-transformers model keeps its Transformer module (the folder itself for a
    plain Hugging Face model), that module's tokenizer arguments, and whether it lowercases texts."""
    try:
        modules = json.loads((path / "modules.json").read_text())
    except (OSError, ValueError):
        modules = []
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith(".Transformer"):
            folder = path / str(module.get("path", ""))
            config = read_json(folder / "sentence_bert_config.json")
            # its tokenizer_args go to the tokenizer, as sentence-transformers passes them; its
            # do_lower_case is not a tokenizer argument (sentence-transformers lowercases texts itself)
            return folder, dict(config.get("tokenizer_args") or {}), bool(config.get("do_lower_case"))
    return path, {}, False


class TokenizerOnlyBackend(HFTokenizerMethods, Backend):
    def __init__(self, path: str | Path, info: ModelInfo):
        if info.kind not in TOKENIZED_HERE:
            raise ModelLoadError(f"a {info.kind} model is tokenized by its own head, in the engine")
        from transformers import AutoTokenizer

        folder, args, lowercase = transformer_folder(Path(path))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **args)
        except Exception as exc:  # noqa: BLE001 - no tokenizer files: the engine tokenizes for this model
            raise ModelLoadError(f"could not load the tokenizer of {path}: {exc}") from exc
        self.info = info
        self._pair_tokenizer = tokenizer
        self._tokenizer = HFTokenizer(tokenizer, info.max_seq_length, lowercase=lowercase)
        self.pad_id = self._tokenizer.pad_id
        self.model_input_names = list(getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"]))

    def forward(self, batch: Batch) -> Any:
        raise RuntimeError("a front-end process holds no weights: the engine runs the model")

    def pool(self, batch: Batch, hidden: Any):
        raise RuntimeError("a front-end process holds no weights: the engine runs the model")

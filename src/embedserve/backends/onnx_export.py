"""Export a model's encoder to ONNX once, optimise it, and cache the result on disk.

The cache key covers everything that changes the graph: the model's weights and config
(file sizes and modification times, plus the Hub commit when the folder is a Hub
snapshot), the export settings, the precision, and the torch and onnxruntime versions. A
restart with the same key loads the cached graph in seconds; an entry that fails to load
is deleted and rebuilt by the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# ONNX Runtime's official builds start a telemetry uploader (1DS: it resolves
# mobile.events.data.microsoft.com ~10 s later and keeps retrying) and write a device id and an
# event store under ~/.cache/Microsoft as soon as the module is *imported*. Only this variable,
# set before that import, stops all of it; `disable_telemetry_events()` afterwards does not stop
# the uploader. An environment that sets ORT_DISABLE_TELEMETRY itself keeps its value. This is
# the one module that imports onnxruntime at import time; onnx_backend.py imports this module
# before anything else of ONNX Runtime's, and smoothing.py imports onnxruntime lazily, later.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

if os.environ["ORT_DISABLE_TELEMETRY"] == "1":
    ort.disable_telemetry_events()  # what is left to do if something imported onnxruntime before us

log = logging.getLogger(__name__)

EXPORT_VERSION = 3  # bump when the export code changes what it writes (2: eager attention; 3: split BiasGelu, int8 smoothing)
OPSET = 17
_FINGERPRINT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")


def model_fingerprint(path: Path) -> dict:
    files = {}
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if file.is_file() and file.suffix in _FINGERPRINT_SUFFIXES and ".cache" not in relative.parts:
            stat = file.stat()
            files[str(relative)] = [stat.st_size, stat.st_mtime_ns]
    # A Hub snapshot folder is named by its commit: the revision pins the weights.
    revision = path.name if path.parent.name == "snapshots" else None
    fingerprint = {"path": str(path.resolve()), "revision": revision, "files": files}
    base = adapter_base(path)
    if base is not None and base.is_dir() and base.resolve() != path.resolve():
        fingerprint["adapter_base"] = model_fingerprint(base)  # a LoRA adapter's graph holds its base's weights too
    return fingerprint


def adapter_base(path: Path) -> Path | None:
    """The base model folder a LoRA adapter folder names (adapter_config.json), else None."""
    try:
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    return Path(base) if isinstance(base, str) and base else None


def cache_key(path: Path, settings: dict) -> str:
    material = {
        "model": model_fingerprint(path),
        "settings": settings,
        "export_version": EXPORT_VERSION,
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


ABANDONED_BUILD_SECONDS = 3600


class GraphCache:
    """Folders of built graphs under `root`, each written atomically (temp folder, then rename)."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser()

    def entry(self, key: str) -> Path:
        return self.root / "onnx" / key

    def get_or_build(self, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """The entry folder for `key`, and whether it was already there."""
        folder = self.entry(key)
        if (folder / "meta.json").is_file():
            return folder, True
        folder.parent.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned_builds(folder.parent, key)
        scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
        try:
            build(scratch)
            (scratch / "meta.json").write_text(json.dumps({"key": key}))
            if folder.exists() and not (folder / "meta.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)  # a leftover of an interrupted build
            try:
                os.replace(scratch, folder)
            except OSError:  # another process built it first: keep theirs
                shutil.rmtree(scratch, ignore_errors=True)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return folder, False

    def invalidate(self, key: str) -> None:
        shutil.rmtree(self.entry(key), ignore_errors=True)

    @staticmethod
    def _remove_abandoned_builds(parent: Path, key: str) -> None:
        """Scratch folders of builds killed midway (kill -9, OOM) stay behind; one untouched for
        ABANDONED_BUILD_SECONDS is nobody's (a live build, another process's too, writes sooner)."""
        now = time.time()
        for scratch in parent.glob(f".{key}-*"):
            try:
                if now - scratch.stat().st_mtime > ABANDONED_BUILD_SECONDS:
                    shutil.rmtree(scratch, ignore_errors=True)
            except OSError:
                pass


class _EncoderForExport(torch.nn.Module):
    """Positional inputs -> last hidden state, the only thing the ONNX graph computes."""

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True))).last_hidden_state


class _SpladeForExport(torch.nn.Module):
    """Positional inputs -> SPLADE term weights [batch, vocab]: max over tokens of log1p(relu(MLM logits)).

    Pooled inside the graph, as sentence-transformers' SpladePooling (max, relu) computes it, so
    the graph returns one vocabulary-sized row per input instead of one per token (30,522 floats
    a token for a BERT vocabulary). The max is taken first: log1p(relu(.)) never decreases, so
    log1p(relu(max_t x_t)) is exactly max_t log1p(relu(x_t)) (the same element wins), and two of
    the three passes over the [batch, tokens, vocab] logits become passes over [batch, vocab].
    Padded positions count as 0, as SpladePooling's `logits * mask` makes them.
    """

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, inputs, strict=True))
        logits = self.model(**features).logits
        mask = features["attention_mask"].unsqueeze(-1).to(logits.dtype)
        return torch.log1p(torch.relu((logits * mask).max(dim=1).values))


class _ScoresForExport(_EncoderForExport):
    """Positional inputs -> a sequence classifier's logits [batch, labels]: a cross-encoder's raw scores.

    The whole model (encoder, pooler, classifier) is one graph, so a batch of pairs is one
    session.run; the model's activation (sigmoid / softmax) runs after it, on its few floats.
    """

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True))).logits


def export_encoder(
    model: torch.nn.Module, input_names: Sequence[str], out: Path, *, splade: bool = False, scores: bool = False
) -> None:
    """Export with dynamic batch and sequence axes, so any batch shape runs.

    Traced with transformers' eager attention rather than SDPA: the SDPA trace adds NaN
    guards (IsNaN/Where) around every softmax and 30% more shape ops, and the eager graph
    ran faster in ONNX Runtime (same vectors; docs/benchmarks.md). `splade`: the graph pools
    SPLADE term weights; `scores`: it is a whole sequence classifier (a cross-encoder's logits).
    """
    wrapper = (_SpladeForExport if splade else _ScoresForExport if scores else _EncoderForExport)(model, input_names).eval()
    sample = tuple(torch.ones(2, 8, dtype=torch.long) for _ in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*input_names, "last_hidden_state"]}
    if splade or scores:
        axes["last_hidden_state"] = {0: "batch"}  # the output keeps its name: one row per input
    previous = getattr(model.config, "_attn_implementation", None)
    switch = hasattr(model, "set_attn_implementation") and previous not in (None, "eager")
    if switch:
        model.set_attn_implementation("eager")
    try:
        with torch.inference_mode(False), torch.no_grad(), merged_adapters(model):
            torch.onnx.export(
                wrapper,
                sample,
                str(out),
                input_names=list(input_names),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
    finally:
        if switch:
            model.set_attn_implementation(previous)


@contextlib.contextmanager
def merged_adapters(model: torch.nn.Module):
    """LoRA layers merged into (copies of) their base weights while the model is traced.

    Traced unmerged, each adapted Linear becomes three MatMuls and an Add; merged, it is the one
    MatMul of the base model's graph, which the fusions and int8 then treat like any other. The
    base weights are copied before merging because they may be shared with other loaded models
    (backends/shared_weights.py); the copies are unmerged again afterwards.
    """
    if not any("lora_" in name for name, _ in model.named_modules()):
        yield  # no adapter: peft is not even imported
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.merged]
    for layer in layers:
        weight = layer.get_base_layer().weight
        weight.data = weight.data.clone()
        layer.merge()
    try:
        yield
    finally:
        for layer in layers:
            layer.unmerge()


# ONNX Runtime's session-time fusion that would undo split_bias_gelu (see there).
_SESSION_DISABLED_OPTIMIZERS = ["BiasGeluFusion"]


def open_session(graph: Path, threads: int, *, save_optimized: Path | None = None) -> ort.InferenceSession:
    """A CPU session for a graph this module built (all session-time optimisations but one).

    save_optimized: also write the graph as the session optimised it (to inspect it).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if save_optimized is not None:
        options.optimized_model_filepath = str(save_optimized)
    return ort.InferenceSession(
        str(graph), options, providers=["CPUExecutionProvider"], disabled_optimizers=_SESSION_DISABLED_OPTIMIZERS
    )


def optimize_graph(src: Path, dst: Path) -> None:
    """Fuse with ONNX Runtime's own transformer-aware optimisers, offline.

    EXTENDED level (layer-norm, GELU, bias, MatMul fusions) is hardware-independent, so the
    result can be cached; layout-specific optimisations run at session start. Measured on
    all-MiniLM-L6-v2 (2 cores): onnxruntime.transformers' offline fusions (fused Attention,
    MultiHeadAttention, SkipLayerNorm) ran 5-40% slower than this, so they are not used.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    split_bias_gelu(dst)


def split_bias_gelu(path: Path) -> int:
    """BiasGelu(x, bias) -> Gelu(x + bias): the same exact (erf) GELU, computed faster.

    Measured on this CPU (308 tokens x 1536): the fused BiasGelu took 447 us, a bias Add plus
    the plain Gelu kernel 417 us, and in the int8 graph the Add disappears altogether (ONNX
    Runtime folds it into the quantised MatMul before it as that kernel's bias): ~4% of the
    whole int8 forward. Sessions must be opened with open_session, or ONNX Runtime fuses
    the pair back. Returns how many GELUs were split.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    nodes, split = [], 0
    for node in model.graph.node:
        if node.op_type == "BiasGelu" and node.domain == "com.microsoft" and len(node.input) == 2:
            biased = f"{node.output[0]}/biased"
            nodes.append(helper.make_node("Add", list(node.input), [biased], name=f"{node.name}/bias"))
            nodes.append(
                helper.make_node("Gelu", [biased], list(node.output), name=f"{node.name}/gelu", domain="com.microsoft")
            )
            split += 1
        else:
            nodes.append(node)
    if split:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))
    return split


def quantize_int8(src: Path, dst: Path, exclude: Sequence[str] = ()) -> None:
    """Per-channel dynamic int8 quantisation of the MatMul weights (VNNI on x86).

    `src` may be an optimised graph: its contrib ops (Gelu, FusedMatMul) carry no
    shape-inference types, so outputs without a known type are taken as float.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantiser logs every tensor on the root logger
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=list(exclude),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)


def weight_matmuls(path: Path) -> list[str]:
    """MatMul nodes with a constant weight: the ones dynamic quantisation can turn int8."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    return [node.name for node in graph.node if node.op_type == "MatMul" and node.input[1] in constants]


def quantize_within_fidelity(
    src: Path, out: Path, measure: Callable[[Path], float], target: float, *, measured: float | None = None
) -> list[str]:
    """int8 for every weight MatMul, except those whose quantisation costs the fidelity target.

    First everything is quantised; if the mean cosine to the reference stays at or above
    `target`, that's the graph. Otherwise each layer's own cost is measured (only it
    quantised) and the costliest are left in fp32, one by one, until the target holds.
    Returns the names of the layers left in fp32. `measured`: `out` already holds `src` with
    every layer quantised, at this mean cosine (so it is not quantised and measured again).
    """
    if measured is None:
        quantize_int8(src, out)
        measured = measure(out)
    if measured >= target:
        return []
    nodes = weight_matmuls(src)
    cost = {}
    for node in nodes:
        quantize_int8(src, out, exclude=[other for other in nodes if other != node])
        cost[node] = 1.0 - measure(out)
    kept_fp32: list[str] = []
    for node in sorted(nodes, key=lambda n: cost[n], reverse=True):
        kept_fp32.append(node)
        quantize_int8(src, out, exclude=kept_fp32)
        if measure(out) >= target:
            break
    log.info("int8: %d of %d layers kept in fp32 to reach mean cosine %.4f", len(kept_fp32), len(nodes), target)
    return kept_fp32

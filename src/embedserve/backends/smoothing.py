"""Activation smoothing before int8 quantisation (SmoothQuant, Xiao et al. 2022).

Dynamic int8 quantises each MatMul's input with one scale for the whole tensor (all tokens
of all inputs in the batch, all channels). Transformer LayerNorm outputs carry a few
channels far larger than the rest, and that one scale must cover them, so the ordinary
channels keep only a few bits. Smoothing divides each input channel j by a factor s_j and
multiplies row j of the weight by the same factor, which leaves the product unchanged:

    X W = (X / s) (s W),    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

The big channels shrink, the rest of the tensor gets the bits, and the weights (quantised
per output channel, offline) absorb the difference. Only inputs that come straight from a
LayerNormalization are smoothed: that is where the outlier channels are. Measured on
all-MiniLM-L6-v2 (alpha 0.6, calibration set): mean cosine to fp32 0.9928 -> 0.9963, min
0.959 -> 0.981, STS-B 81.8 -> 82.0 (fp32: 82.05), at the same speed. Smoothing the inputs
of the attention output and of the second FFN layer as well made it worse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

DEFAULT_ALPHA = 0.6
_CLIP = (1e-2, 1e2)  # bounds on s: a dead channel or an all-zero weight row must not blow up


def layer_norm_fed_inputs(path: Path) -> dict[str, list[str]]:
    """Tensor name -> the weight MatMuls reading it, for tensors a LayerNormalization writes."""
    import onnx

    return _layer_norm_fed_inputs(onnx.load(str(path), load_external_data=False).graph)


def _layer_norm_fed_inputs(graph) -> dict[str, list[str]]:
    constants = {init.name for init in graph.initializer}
    from_layer_norm = {out for node in graph.node if node.op_type == "LayerNormalization" for out in node.output[:1]}
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in constants and node.input[0] in from_layer_norm:
            readers.setdefault(node.input[0], []).append(node.name)
    return readers


def channel_maxima(path: Path, tensors: Iterable[str], feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """max |value| per last-axis channel of each named tensor, over every batch in `feeds`."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    names = list(tensors)
    probe = onnx.load(str(path))
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    accepted = {i.name for i in session.get_inputs()}
    maxima: dict[str, np.ndarray] = {}
    for feed in feeds:
        outputs = session.run(names, {k: v for k, v in feed.items() if k in accepted})
        for name, value in zip(names, outputs, strict=True):
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            maxima[name] = np.maximum(maxima[name], peak) if name in maxima else peak
    return maxima


def smooth_graph(src: Path, dst: Path, maxima: Mapping[str, np.ndarray], alpha: float = DEFAULT_ALPHA) -> int:
    """Write `src` with every tensor in `maxima` smoothed for the MatMuls that read it.

    A Mul by 1/s goes between the tensor and its MatMuls (it stays fp32; the LayerNorm's
    output also feeds the residual path, so the LayerNorm itself cannot absorb it) and each
    MatMul's weight rows are multiplied by s. Returns how many tensors were smoothed.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    weights = {init.name: init for init in model.graph.initializer}
    readers = _layer_norm_fed_inputs(model.graph)
    matmuls = {node.name: node for node in model.graph.node if node.op_type == "MatMul"}
    nodes = []
    smoothed = 0
    for tensor, peak in maxima.items():
        group = [matmuls[name] for name in readers.get(tensor, [])]
        if not group:
            continue
        rows = [numpy_helper.to_array(weights[node.input[1]]) for node in group]
        weight_peak = np.max([np.abs(w).max(axis=1) for w in rows], axis=0)
        scale = (np.maximum(peak, 1e-5) ** alpha / np.maximum(weight_peak, 1e-5) ** (1 - alpha)).clip(*_CLIP)
        scale = scale.astype(np.float32)
        divided = f"{tensor}/smoothed"
        inverse = f"{tensor}/smoothing"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        nodes.append((tensor, helper.make_node("Mul", [tensor, inverse], [divided], name=f"{tensor}/smooth")))
        for node, weight in zip(group, rows, strict=True):
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
            node.input[0] = divided
        smoothed += 1
    # Each Mul goes right after the node that writes its tensor, keeping the graph in order.
    producer_of = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    ordered = list(model.graph.node)
    for tensor, mul in sorted(nodes, key=lambda item: producer_of[item[0]], reverse=True):
        ordered.insert(producer_of[tensor] + 1, mul)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    onnx.save(model, str(dst))
    return smoothed

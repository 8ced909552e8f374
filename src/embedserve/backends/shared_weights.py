"""One copy of the weights that several loaded torch models hold identically: LoRA adapters of a base.

Why: a LoRA adapter folder (a fine-tuning job's output) names its base model, and loading it
(transformers' PEFT integration, through sentence-transformers) loads the whole base and wraps its
target layers. Each adapter served would hold its own full copy of the base, though all but the
adapter's few hundred kilobytes are the same numbers, and the base itself may be served too.

How: once a torch model is loaded, and its precision lowered (bf16 turns the Linear weights into
new tensors), every parameter that is not an adapter's own (`lora_*`) is looked up among the
parameters of the models loaded before it by what it is (its name without PEFT's `base_model.model.`
and `.base_layer`, dtype, shape, device). Where one holds the *same values* (`torch.equal`), the
new model's parameter is pointed at that storage and the copy just loaded is freed. Sharing is
decided by values, never by names or paths alone, so models that merely look alike never share.
The weights are never written while serving (training runs in another process), so the models
cannot disturb one another. The parameters are tracked weakly: an unloaded model's weights stay
alive only while another model still uses them.

The torch backend shares right after lowering the precision and before compiling, so a compiled
encoder is traced on the storage it will run on.
"""

from __future__ import annotations

import threading
import weakref

import torch

_LOCK = threading.Lock()
_HELD: dict[tuple, list[weakref.ref]] = {}  # what a parameter is -> every loaded parameter that is one


def _base_name(name: str) -> str:
    return name.replace("base_model.model.", "").replace(".base_layer.", ".")


def _key(name: str, tensor: torch.Tensor) -> tuple:
    return _base_name(name), tensor.dtype, tuple(tensor.shape), str(tensor.device)


def share(model: torch.nn.Module) -> int:
    """Point the model's parameters at identical ones already loaded; the bytes it now shares."""
    shared = 0
    with _LOCK:
        for name, param in model.named_parameters(remove_duplicate=True):
            if "lora_" in name:
                continue
            held = _HELD.setdefault(_key(name, param), [])
            held[:] = [ref for ref in held if ref() is not None]
            for ref in held:
                other = ref()
                if other is not None and other is not param and torch.equal(other.data, param.data):
                    if other.data_ptr() != param.data_ptr():
                        param.data = other.data
                        shared += param.numel() * param.element_size()
                    break
            held.append(weakref.ref(param))
        for key in [k for k, refs in _HELD.items() if not any(ref() is not None for ref in refs)]:
            del _HELD[key]
    return shared

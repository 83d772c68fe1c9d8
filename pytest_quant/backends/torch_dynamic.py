"""PyTorch dynamic int8 on CPU: ``nn.Linear`` weights to int8, activations quantized per call.

Two implementations of the same scheme. ``api = "torch.ao"`` is the seeds' ``quantize_dynamic(model,
{nn.Linear}, dtype=torch.qint8)``; torch deprecates it ("torch.ao.quantization is deprecated ... please
migrate to use torchao eager mode quantize_ API") and keeps it for now. ``api = "torchao"`` is that
successor: ``torchao.quantization.quantize_`` with ``Int8DynamicActivationInt8WeightConfig``.

Neither keeps its int8 weights where ``get_memory_footprint`` looks (``quantize_dynamic`` moves them into
packed params, torchao into tensor subclasses that report float32), so the loaded model carries a
``get_memory_footprint`` that counts the bytes really stored; the figure is also in
``notes["footprint_bytes"]``.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from . import Loaded, load_tokenizer
from .base import attach_footprint, cpu_settings, kernel_name, refuse_unknown_fields

REQUIRES: tuple[str, ...] = ()  # torch itself; api = "torchao" needs torchao
INSTALL_HINT = "pip install 'pytest-quant[torchao]'"
DEVICES = ("cpu",)
FIELDS = frozenset({"api", "weight_dtype", "skip_modules"})
APIS = ("torch.ao", "torchao")
WEIGHT_DTYPES = {"torch.ao": ("qint8", "float16"), "torchao": ("qint8",)}
DEFAULTS = {"api": "torch.ao", "weight_dtype": "qint8", "skip_modules": ()}

# Built-in recipes this backend proposes: name -> (description, settings).


def validate(settings: dict[str, Any]) -> None:
    refuse_unknown_fields("torch_dynamic", settings, FIELDS)
    api = settings.get("api", DEFAULTS["api"])
    if api not in APIS:
        raise ValueError(f"torch_dynamic: api = {api!r} is not one of {list(APIS)}")
    weight_dtype = settings.get("weight_dtype", DEFAULTS["weight_dtype"])
    if weight_dtype not in WEIGHT_DTYPES[api]:
        raise ValueError(
            f"torch_dynamic: weight_dtype = {weight_dtype!r} is not accepted with api = {api!r}; "
            f"accepted: {list(WEIGHT_DTYPES[api])}"
        )
    skip = settings.get("skip_modules", ())
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise ValueError(f"torch_dynamic: skip_modules = {skip!r} must be a list of module names (e.g. ['lm_head'])")


def load(request) -> Loaded:
    import torch
    from transformers import AutoModelForCausalLM

    settings = cpu_settings(request, "torch_dynamic", "its int8 kernels are CPU kernels", DEFAULTS, validate)
    model = AutoModelForCausalLM.from_pretrained(request.model_path, dtype=torch.float32, device_map="cpu",
                                                 trust_remote_code=request.trust_remote_code)
    model.eval()
    start = time.perf_counter()
    notes: dict[str, Any] = {"api": settings["api"]}
    skip = set(settings["skip_modules"])
    if settings["api"] == "torch.ao":
        notes["deprecation"] = _quantize_torch_ao(model, settings["weight_dtype"], skip)
    else:
        _quantize_torchao(model, skip)
    seconds = time.perf_counter() - start
    attach_footprint(model)
    notes["footprint_bytes"] = model.get_memory_footprint()
    return Loaded(
        model,
        load_tokenizer(request.model_path, request.trust_remote_code),
        "float32",
        kernel=kernel_name(model),
        quantize_seconds=seconds,
        notes=notes,
    )


def _quantize_torch_ao(model, weight_dtype: str, skip: set[str]) -> str:
    """``quantize_dynamic`` in place; returns torch's deprecation warning text ("" if none)."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    dtype = torch.qint8 if weight_dtype == "qint8" else torch.float16
    spec = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name not in skip}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        quantize_dynamic(model, spec, dtype=dtype, inplace=True)
    for w in caught:  # the quantized-tensor deprecation (a UserWarning) is passed on as it came
        if not issubclass(w.category, DeprecationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return next((str(w.message).splitlines()[0] for w in caught if issubclass(w.category, DeprecationWarning)), "")


def _quantize_torchao(model, skip: set[str]) -> None:
    import torch
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    def wanted(module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and fqn not in skip

    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=wanted)

"""NVIDIA Model Optimizer (TensorRT's quantization toolkit) in PyTorch: fp8 and int4 AWQ, on CUDA.

``mtq.quantize(model, config, forward_loop)`` calibrates on token windows of the calibration text and
inserts quantizers that simulate the format ("fake quantization"): the arithmetic is still the 16-bit
matmul, so the quality figures are those the format gives, but speed and memory are not those of a
TensorRT(-LLM) engine. With ``compress = true`` ``mtq.compress`` stores the weights in the low-precision
format, so the footprint reflects it. The model is calibrated where it is measured, so the load peak
includes the calibration's activations. CUDA only: on CPU ``load`` fails at once with "needs CUDA".
Not run on this project's CPU machines; ``benchmarks/BACKENDS_NOTES.md`` records what was checked.
"""

from __future__ import annotations

import time
from typing import Any

from . import Loaded, default_dtype, load_tokenizer
from .base import attach_footprint, kernel_name, refuse_unknown_fields

REQUIRES: tuple[str, ...] = ("modelopt",)
INSTALL_HINT = "pip install 'pytest-quant[modelopt]'"
DEVICES = ("cuda",)
CALLS_BEFORE_LOAD = True
# format -> the mtq config constant it uses
FORMATS = {"fp8": "FP8_DEFAULT_CFG", "int4_awq": "INT4_AWQ_CFG", "int8_smoothquant": "INT8_SMOOTHQUANT_CFG",
           "nvfp4": "NVFP4_DEFAULT_CFG"}  # nvfp4: fake-quantized (fp4 tensor cores are Blackwell's)
FIELDS = frozenset({"format", "compress", "calibration", "calibration_samples", "calibration_seq_len"})


def validate(settings: dict[str, Any]) -> None:
    refuse_unknown_fields("modelopt", settings, FIELDS)
    fmt = settings.get("format")
    if fmt not in FORMATS:
        raise ValueError(f"modelopt: format = {fmt!r} is not one of {sorted(FORMATS)}")
    if "compress" in settings and not isinstance(settings["compress"], bool):
        raise ValueError(f"modelopt: compress = {settings['compress']!r} must be true or false")
    for name in ("calibration_samples", "calibration_seq_len"):
        value = settings.get(name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"modelopt: {name} = {value!r} must be a positive integer")


def check_device(device: str) -> None:
    if not str(device).startswith("cuda"):
        raise ValueError(
            f"modelopt needs CUDA (its fp8/int4 quantizers and calibration run on NVIDIA GPUs); device is {device!r}"
        )
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"modelopt needs CUDA; device {device!r} was asked for but torch sees no CUDA device")


def load(request) -> Loaded:
    settings = dict(request.recipe.options)
    validate(settings)
    check_device(request.device)
    import torch
    import modelopt.torch.quantization as mtq
    from transformers import AutoModelForCausalLM

    dtype = default_dtype(request.model_path, request.device)
    tokenizer = load_tokenizer(request.model_path, request.trust_remote_code)
    # The model is quantized where it lives, on the device: the measured load starts before it lands there
    # (called after the calibration, as before, the tracker started with the model already resident: 0 B).
    request.before_load()
    model = AutoModelForCausalLM.from_pretrained(request.model_path, dtype=dtype, device_map=request.placement,
                                                 trust_remote_code=request.trust_remote_code)
    model.eval()
    windows = _calibration_windows(request, settings, tokenizer)

    def forward_loop(m) -> None:
        with torch.no_grad():
            for window in windows:
                m(torch.tensor([window], dtype=torch.long, device=request.device))

    config = getattr(mtq, FORMATS[settings["format"]])
    start = time.perf_counter()
    model = mtq.quantize(model, config, forward_loop)
    notes: dict[str, Any] = {"format": settings["format"], "simulated": True, "calibration_windows": len(windows)}
    if settings.get("compress"):
        mtq.compress(model)
        notes["simulated"] = False
    torch.cuda.synchronize(request.device)
    seconds = time.perf_counter() - start
    attach_footprint(model)
    notes["footprint_bytes"] = model.get_memory_footprint()
    return Loaded(model, tokenizer, str(dtype).removeprefix("torch."), kernel=kernel_name(model),
                  quantize_seconds=seconds, notes=notes)


def _calibration_windows(request, settings: dict[str, Any], tokenizer):
    from .. import calibration as calib
    from ..models import embedded_calibration_text

    return calib.for_recipe(settings, request.calibration_text or embedded_calibration_text(), tokenizer).windows

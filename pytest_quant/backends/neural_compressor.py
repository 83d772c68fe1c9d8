"""Intel Neural Compressor 3.x weight-only quantization (``neural_compressor.torch``) on CPU: RTN and GPTQ.

``prepare``/``convert`` with ``RTNConfig`` (round to nearest, no data) or ``GPTQConfig`` (calibrated on
token windows of the calibration text, ``pytest_quant.calibration``). INC's RTN defaults to layer-wise
loading from a checkpoint path; the model is already in memory here, so ``use_layer_wise`` is off. The
quantized layers are INC's ``INCWeightOnlyLinear``, whose packed int32 weights are buffers, so
transformers' ``get_memory_footprint`` counts them; the figure is recomputed the same way as the other
backends' (``base.memory_footprint``) for ``notes["footprint_bytes"]``.
"""

from __future__ import annotations

import time
from typing import Any

from . import Loaded, load_tokenizer
from .base import attach_footprint, cpu_settings, kernel_name, refuse_unknown_fields

REQUIRES: tuple[str, ...] = ("neural_compressor",)
INSTALL_HINT = "pip install 'pytest-quant[inc]'"
DEVICES = ("cpu",)
CALLS_BEFORE_LOAD = True
ALGORITHMS = ("rtn", "gptq")
FIELDS = frozenset(
    {"algorithm", "bits", "group_size", "use_sym", "quant_lm_head", "calibration", "calibration_samples",
     "calibration_seq_len", "act_order", "percdamp"}
)
DEFAULTS: dict[str, Any] = {"algorithm": "rtn", "bits": 4, "group_size": 128, "use_sym": True, "quant_lm_head": False}


def validate(settings: dict[str, Any]) -> None:
    refuse_unknown_fields("neural_compressor", settings, FIELDS)
    algorithm = settings.get("algorithm", DEFAULTS["algorithm"])
    if algorithm not in ALGORITHMS:
        raise ValueError(f"neural_compressor: algorithm = {algorithm!r} is not one of {list(ALGORITHMS)}")
    bits = settings.get("bits", DEFAULTS["bits"])
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"neural_compressor: bits = {bits!r} is not one of [2, 3, 4, 8]")
    group_size = settings.get("group_size", DEFAULTS["group_size"])
    if not isinstance(group_size, int) or (group_size < 1 and group_size != -1):
        raise ValueError(f"neural_compressor: group_size = {group_size!r} must be a positive integer, or -1 (per channel)")
    for name in ("calibration_samples", "calibration_seq_len"):
        value = settings.get(name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"neural_compressor: {name} = {value!r} must be a positive integer")
    if algorithm == "rtn":
        given = sorted(set(settings) & {"calibration", "calibration_samples", "calibration_seq_len", "act_order", "percdamp"})
        if given:
            raise ValueError(f"neural_compressor: {given} are GPTQ fields; algorithm = 'rtn' takes no calibration")


def load(request) -> Loaded:
    import torch
    from transformers import AutoModelForCausalLM

    settings = cpu_settings(request, "neural_compressor", "its weight-only kernels are run here on CPU", DEFAULTS,
                            validate)
    from neural_compressor.torch.quantization import GPTQConfig, RTNConfig, convert, prepare

    tokenizer = load_tokenizer(request.model_path, request.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(request.model_path, dtype=torch.float32, device_map="cpu",
                                                 trust_remote_code=request.trust_remote_code)
    model.eval()
    common = dict(
        bits=settings["bits"],
        group_size=settings["group_size"],
        use_sym=settings["use_sym"],
        quant_lm_head=settings["quant_lm_head"],
    )
    notes: dict[str, Any] = {"algorithm": settings["algorithm"]}
    start = time.perf_counter()
    if settings["algorithm"] == "rtn":
        model = convert(prepare(model, RTNConfig(use_layer_wise=False, **common)))
    else:
        config = GPTQConfig(act_order=settings.get("act_order", False), percdamp=settings.get("percdamp", 0.01), **common)
        windows = _calibration_windows(request, settings, tokenizer, notes)
        model = prepare(model, config)
        with torch.no_grad():
            for window in windows:
                model(torch.tensor([window], dtype=torch.long))
        model = convert(model)
    seconds = time.perf_counter() - start
    model.eval()
    request.before_load()
    attach_footprint(model)
    notes["footprint_bytes"] = model.get_memory_footprint()
    return Loaded(model, tokenizer, "float32", kernel=kernel_name(model), quantize_seconds=seconds, notes=notes)


def _calibration_windows(request, settings: dict[str, Any], tokenizer, notes: dict[str, Any]):
    from .. import calibration as calib
    from ..models import embedded_calibration_text

    built = calib.for_recipe(settings, request.calibration_text or embedded_calibration_text(), tokenizer)
    notes["calibration"] = {"source": built.source, "samples": built.samples, "seq_len": built.seq_len}
    return built.windows

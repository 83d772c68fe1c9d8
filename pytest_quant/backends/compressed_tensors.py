"""compressed-tensors checkpoints (what llm-compressor writes and vLLM and SGLang load): made on the fly, loaded
back the way transformers loads them, and kept compressed while they run.

A recipe quantizes the model round-to-nearest with compressed-tensors' own API (``apply_quantization_config``,
scales from each weight group's min and max through ``calculate_qparams``, ``ModelCompressor``), saves it in the
compressed-tensors format (``pack-quantized`` int4, ``int-quantized`` int8, ``float-quantized`` fp8) into a
temporary folder and loads that folder with ``AutoModelForCausalLM.from_pretrained``: what is gated is the file a
serving stack would load. compressed-tensors 0.20 decompresses the whole model on its first forward pass (its
``ct_decompress_hook``), which would leave dense weights resident; ``keep_compressed`` replaces that hook by one
that decompresses each layer's weight for the duration of its own forward call, so the resident footprint is
the format's (packed weights and scales) and the arithmetic is the format's dequantized weights, with the
scheme's dynamic activation quantization (W8A8: int8 per token) simulated as compressed-tensors does. FP8 on CUDA
(compute capability 8.9+) runs transformers' FP8 kernels (``use_optimized_inference``) instead.
Light: the libraries are imported inside the functions.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from . import Loaded, LoadRequest
from .common import default_dtype, load_tokenizer

REQUIRES: tuple[str, ...] = ("compressed_tensors",)
INSTALL_HINT = "pip install 'pytest-quant[ct]'"
# scheme (compressed-tensors' preset name) -> device kinds it runs on here
SCHEMES: dict[str, frozenset[str]] = {
    "W4A16": frozenset({"cpu", "cuda"}),
    "W8A16": frozenset({"cpu", "cuda"}),
    "W8A8": frozenset({"cpu", "cuda"}),
    "FP8_DYNAMIC": frozenset({"cuda"}),  # fp8 weights and per-token fp8 activations; kernels need 8.9+
}
FIELDS = frozenset({"scheme", "group_size", "ignore"})


def validate(settings: dict[str, Any]) -> None:
    scheme = settings.get("scheme")
    if scheme not in SCHEMES:
        raise ValueError(f"compressed_tensors: scheme = {scheme!r} is not one of {sorted(SCHEMES)}")
    group_size = settings.get("group_size")
    if group_size is not None:
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
            raise ValueError(f"compressed_tensors: group_size = {group_size!r} must be a positive integer (e.g. 128)")
        if scheme not in ("W4A16", "W8A16"):
            raise ValueError(f"compressed_tensors: group_size is accepted only with scheme W4A16 or W8A16, not {scheme!r}")
    ignore = settings.get("ignore")
    if ignore is not None and (not isinstance(ignore, (list, tuple)) or not all(isinstance(n, str) for n in ignore)):
        raise ValueError(f"compressed_tensors: ignore = {ignore!r} must be a list of module names (e.g. ['lm_head'])")


def check_device(scheme: str, device: str) -> None:
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if kind not in SCHEMES[scheme]:
        raise ValueError(f"compressed_tensors: scheme {scheme!r} needs CUDA (fp8 kernels); device is {device!r}")


def scheme_label(quantization_config: dict) -> str:
    """What a checkpoint's compressed-tensors ``quantization_config`` (config.json's JSON) holds, as the kernel
    column shows it: e.g. "compressed-tensors W4A16 int g128 sym (pack-quantized)"."""
    groups = quantization_config.get("config_groups") or {}
    parts = []
    for group in groups.values():
        weights = group.get("weights") or {}
        acts = group.get("input_activations") or {}
        bits = weights.get("num_bits", "?")
        name = f"W{bits}A{acts.get('num_bits', 16) if acts else 16}"
        if weights.get("type") == "float" or acts.get("type") == "float":
            name += " fp" if bits == 8 else f" {weights.get('type', '')}"
        else:
            name += " int"
        strategy = weights.get("strategy")
        name += f" g{weights['group_size']}" if strategy == "group" and weights.get("group_size") else f" per-{strategy}"
        name += " sym" if weights.get("symmetric", True) else " asym"
        if acts:
            name += f", {'dynamic' if acts.get('dynamic') else 'static'} per-{acts.get('strategy')} activations"
        fmt = group.get("format") or quantization_config.get("format")
        parts.append(f"{name} ({fmt})" if fmt else name)
    return "compressed-tensors " + ("; ".join(parts) or "(no config groups)")


def quantize_to_folder(model_path: Path, settings: dict[str, Any], device: str, out_dir: Path,
                       trust_remote_code: bool = False) -> None:
    """Round-to-nearest with compressed-tensors' API, saved in its format (config, weights, tokenizer)."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationConfig, QuantizationStatus, apply_quantization_config,
                                                 preset_name_to_scheme)
    from transformers import AutoModelForCausalLM

    scheme = preset_name_to_scheme(settings["scheme"], ["Linear"])
    if settings.get("group_size") is not None:
        scheme.weights.group_size = int(settings["group_size"])
    config = QuantizationConfig(config_groups={"group_0": scheme}, ignore=list(settings.get("ignore", ["lm_head"])),
                                quantization_status=QuantizationStatus.INITIALIZED)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=default_dtype(model_path, device), device_map=device,
                                                 trust_remote_code=trust_remote_code)
    model.eval()
    apply_quantization_config(model, config, show_progress=False)
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "quantization_scheme", None) is not None:
                set_rtn_scales(module)
                module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(out_dir)
    compressor.update_config(str(out_dir))
    load_tokenizer(model_path, trust_remote_code).save_pretrained(out_dir)


def set_rtn_scales(module) -> None:
    """The weight's scale (and zero point) from its min and max per group, channel or tensor: round to nearest."""
    from compressed_tensors.quantization.utils import calculate_qparams

    args = module.quantization_scheme.weights
    weight = module.weight.data
    if args.strategy == "group":
        if weight.shape[-1] % args.group_size:
            raise ValueError(f"compressed_tensors: group_size {args.group_size} does not divide the input size "
                             f"{weight.shape[-1]} of a linear layer; choose a divisor")
        grouped = weight.unflatten(-1, (weight.shape[-1] // args.group_size, args.group_size))
        low, high = grouped.amin(-1), grouped.amax(-1)
    elif args.strategy == "channel":
        low, high = weight.amin(-1, keepdim=True), weight.amax(-1, keepdim=True)
    else:
        low, high = weight.amin(), weight.amax()
    scale, zero_point = calculate_qparams(low, high, args)
    module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
    if hasattr(module, "weight_zero_point"):
        module.weight_zero_point.data.copy_(zero_point.reshape(module.weight_zero_point.shape))


def keep_compressed(model) -> int:
    """Replace compressed-tensors' whole-model decompression on the first forward by per-layer decompression for
    the duration of each layer's call; how many layers run so. Idempotent."""
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationStatus
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize
    from compressed_tensors.utils import get_direct_state_dict

    hook = getattr(model, "ct_decompress_hook", None)
    if hook is not None:
        hook.remove()
        delattr(model, "ct_decompress_hook")
    wrapped = 0
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or getattr(module, "quantization_status", None) != QuantizationStatus.COMPRESSED:
            continue
        compressor = BaseCompressor.get_value_from_registry(scheme.format.value if hasattr(scheme.format, "value")
                                                            else str(scheme.format))

        def forward(input, module=module, scheme=scheme, compressor=compressor):
            state = {k: v for k, v in get_direct_state_dict(module).items() if k != "bias"}
            weight = compressor.decompress(state, scheme)["weight"].to(input.dtype)
            if scheme.input_activations is not None:
                input = forward_quantize(module, input, "input", scheme.input_activations)
            return torch.nn.functional.linear(input, weight, module.bias)

        module.forward = forward
        wrapped += 1
    return wrapped


def load_folder(path: Path, device: str, device_map: str | None = None, trust_remote_code: bool = False):
    """A compressed-tensors folder loaded by transformers and kept compressed; (model, kernel label)."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    saved = json.loads((Path(path) / "config.json").read_text())["quantization_config"]
    fp8 = any((g.get("weights") or {}).get("type") == "float" for g in (saved.get("config_groups") or {}).values())
    import inspect

    optimized = (fp8 and str(device).startswith("cuda") and torch.cuda.get_device_capability(torch.device(device)) >= (8, 9)
                 and "use_optimized_inference" in inspect.signature(CompressedTensorsConfig.__init__).parameters)
    extra = {"quantization_config": CompressedTensorsConfig(use_optimized_inference=True)} if optimized else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=default_dtype(Path(path), device),
                                                 device_map=device_map or device, trust_remote_code=trust_remote_code,
                                                 **extra)
    model.eval()
    layers = keep_compressed(model)
    label = scheme_label(saved)
    if optimized:
        label += " on transformers' FP8 kernels"
    elif layers:
        label += f", {layers} layers decompressed per call"
    return model, label


def load(request: LoadRequest) -> Loaded:
    settings = dict(request.recipe.options)
    validate(settings)
    check_device(settings["scheme"], request.device)
    start = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="pytest-quant-ct-"))
    try:
        quantize_to_folder(request.model_path, settings, request.device, folder, request.trust_remote_code)
        seconds = time.perf_counter() - start
        files_bytes = sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors")
        request.before_load()
        model, label = load_folder(folder, request.device, request.device_map, request.trust_remote_code)
        tokenizer = load_tokenizer(folder, request.trust_remote_code)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    from .base import attach_footprint

    attach_footprint(model)
    return Loaded(model, tokenizer, str(model.dtype).removeprefix("torch."), kernel=label, quantize_seconds=seconds,
                  notes={"scheme": settings["scheme"], "checkpoint_bytes": files_bytes,
                         "footprint_bytes": model.get_memory_footprint()})

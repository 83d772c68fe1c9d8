"""What a model folder holds: whether its config.json declares a quantization, and what loading it needs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..models import read_config  # noqa: F401 - kept importable from here too
from ..models.vision import is_image_text_to_text
from .base import attach_footprint

# What loading a pre-quantized checkpoint of each method needs installed (import names).
REQUIRES_BY_METHOD: dict[str, tuple[str, ...]] = {
    "gptq": ("gptqmodel", "optimum"),
    "awq": ("gptqmodel",),
    "bitsandbytes": ("bitsandbytes",),
    "compressed-tensors": ("compressed_tensors",),  # llm-compressor's format (vLLM, SGLang)
    "auto-round": ("auto_round",),
}


def quantization_method(model_path: Path) -> str | None:
    """The quantization method a model folder's config.json declares ("gptq", "awq", "bitsandbytes", ...).

    None for an unquantized model. Reads the JSON only (no torch).
    """
    qc = read_config(model_path).get("quantization_config")
    if not isinstance(qc, dict):
        return None
    if qc.get("load_in_4bit") or qc.get("load_in_8bit") or str(qc.get("quant_method", "")).lower() == "bitsandbytes":
        return "bitsandbytes"
    method = qc.get("quant_method")
    return str(method).lower() if method else None


def requirements(model_path: Path) -> tuple[str, ...]:
    """Import names loading this checkpoint needs."""
    return REQUIRES_BY_METHOD.get(quantization_method(model_path) or "", ())


def load_checkpoint(path: Path, device: str, kernel: str | None = None, dtype=None, device_map: str | None = None,
                    trust_remote_code: bool = False, **load_options):
    """Load a quantized checkpoint folder with transformers, with an explicit kernel for GPTQ and AWQ, onto
    ``device`` (or spread by ``device_map="auto"``); ``trust_remote_code`` is passed to transformers as given."""
    from .common import default_dtype, pretrained_class

    method = quantization_method(path)
    if method is None:
        raise ValueError(f"{path}: config.json has no quantization_config, so it is not a quantized checkpoint")
    config = model_config = None
    if method in ("gptq", "awq"):
        from transformers import AwqConfig, GPTQConfig

        from .gptqmodel_spec import AWQ_CONFIG_NAMES, prepare_environment, resolve_kernel

        prepare_environment()

        saved = json.loads((Path(path) / "config.json").read_text())["quantization_config"]
        bits = int(saved.get("bits", 4))
        kernel = resolve_kernel(method, kernel, device, bits, str(path))
        config = GPTQConfig(bits=bits) if method == "gptq" else AwqConfig(bits=bits)
        # transformers copies these "loading attributes" onto the checkpoint's own config without
        # validating them again, so any GPTQModel backend name gets through; AWQ kernels that AwqConfig
        # knows by another name get that name, so a model saved again still passes AwqConfig's check.
        config.backend = AWQ_CONFIG_NAMES.get(kernel, kernel) if method == "awq" else kernel
        for name, value in load_options.items():
            setattr(config, name, value)
        if method == "awq" and is_image_text_to_text(Path(path)) and saved.get("modules_to_not_convert") is None:
            model_config = unconverted_parts_named(Path(path), trust_remote_code)
    elif method == "compressed-tensors":
        from .compressed_tensors import load_folder

        model, label = load_folder(Path(path), device, device_map, trust_remote_code)
        return model, method, label
    elif method not in ("bitsandbytes", "auto-round"):
        raise ValueError(f"{path}: quantization method {method!r} is not one of {sorted(REQUIRES_BY_METHOD)}")
    dtype = dtype if dtype is not None else default_dtype(Path(path), device)
    with warnings.catch_warnings():
        # "You passed `quantization_config` ... loading attributes will be overwritten": that is the point.
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        model = pretrained_class(Path(path)).from_pretrained(
            path, device_map=device_map or device, dtype=dtype, trust_remote_code=trust_remote_code,
            **({"quantization_config": config} if config is not None else {}),
            **({"config": model_config} if model_config is not None else {})
        )
    model.eval()
    # transformers' get_memory_footprint counts each buffer, and GPTQModel's linears keep two views of one
    # storage (wf_unsqueeze_zero, wf_unsqueeze_neg_one): 32 bytes counted twice per linear. Each storage once:
    attach_footprint(model)
    return model, method, kernel


def unconverted_parts_named(path: Path, trust_remote_code: bool = False):
    """The config of an AWQ checkpoint of an image-text-to-text model, its ``modules_to_not_convert`` naming the parts
    outside the language model. GPTQModel quantizes the language model only and saves no such list, so transformers
    would turn the vision tower's and projector's linear layers into AWQ layers with no weights to load (and refuse
    the tower's widths that the group size does not divide)."""
    from transformers import AutoConfig

    from .common import non_language_modules

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    config.quantization_config["modules_to_not_convert"] = non_language_modules(path, trust_remote_code)
    return config

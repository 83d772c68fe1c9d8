"""What every backend's loader shares: the default dtype, the tokenizer, and naming the kernel that ran."""

from __future__ import annotations

from pathlib import Path

from ..hardware import device_kind


def default_dtype(model_path: Path, device: str):
    """fp32 on CPU; on GPU the checkpoint's own 16-bit dtype, else bf16."""
    import json

    import torch

    if device_kind(device) == "cpu":
        return torch.float32
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    name = config.get("dtype") or config.get("torch_dtype")
    return torch.float16 if name == "float16" else torch.bfloat16


def load_tokenizer(model_path: Path, trust_remote_code: bool = False):
    """The model folder's tokenizer. ``trust_remote_code`` is passed explicitly (False unless
    --quant-trust-remote-code): transformers then refuses a folder's own code instead of asking on stdin."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)


def quantized_linear_classes(model) -> str:
    """The distinct class names of the model's quantized linear layers (what kernel ran): every module
    whose class is named like a linear layer but is not torch's own. No ``weight`` is required: GPTQModel's
    AWQ layers keep only ``qweight``."""
    import torch

    names = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if type(m) is not torch.nn.Linear and "linear" in type(m).__name__.lower()
            and not type(m).__module__.startswith("torch.nn")  # MultiheadAttention's out_proj: torch's own
        }
    )
    return ",".join(names) or "Linear"


def pretrained_class(model_path: Path):
    """The transformers Auto class for the folder: AutoModelForImageTextToText for a model with a vision tower
    (``models.vision``), else AutoModelForCausalLM."""
    import transformers

    from ..models import read_config
    from ..models.vision import auto_class_name

    return getattr(transformers, auto_class_name(read_config(model_path)))


def load_pretrained(model_path: Path, trust_remote_code: bool = False, **kwargs):
    """``from_pretrained`` of the folder's Auto class, ``trust_remote_code`` passed explicitly."""
    return pretrained_class(model_path).from_pretrained(model_path, trust_remote_code=trust_remote_code, **kwargs)


def non_language_modules(model_path: Path, trust_remote_code: bool = False) -> list[str]:
    """The runtime names of an image-text-to-text model's parts outside its language model that hold linear layers
    (LLaVA: ``model.vision_tower``, ``model.multi_modal_projector``, ``lm_head``), found on a meta-device skeleton
    built from the folder's config: what a language-model quantizer (GPTQModel's GPTQ and AWQ) leaves unquantized,
    and what transformers must then not convert when it loads the checkpoint."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = pretrained_class(model_path).from_config(config, trust_remote_code=trust_remote_code)
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    decoder_name = next((name for name, module in model.named_modules() if module is decoder and name), None)
    if decoder_name is None:
        raise ValueError(f"{model_path}: {type(model).__name__} names no language model of its own (get_decoder), so "
                         "the parts outside it are unknown: list them in its quantization_config's "
                         "modules_to_not_convert")
    parts, prefix = [], ""
    for step in decoder_name.split("."):  # the siblings of the decoder and of each of its ancestors
        parent = model.get_submodule(prefix)
        for child_name, child in parent.named_children():
            full = f"{prefix}.{child_name}" if prefix else child_name
            if child_name != step and any(isinstance(m, torch.nn.Linear) for m in child.modules()):
                parts.append(full)
        prefix = f"{prefix}.{step}" if prefix else step
    return parts

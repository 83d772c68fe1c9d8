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

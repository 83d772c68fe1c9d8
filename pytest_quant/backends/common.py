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
        }
    )
    return ",".join(names) or "Linear"

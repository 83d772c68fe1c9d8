"""The unquantized model: fp32 on CPU, the checkpoint's 16-bit dtype on GPU."""

from __future__ import annotations

from typing import Any

from . import Loaded, LoadRequest
from .common import default_dtype, load_pretrained, load_tokenizer

DTYPES = ("float32", "float16", "bfloat16")


def validate(settings: dict[str, Any]) -> None:
    dtype = settings.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"field 'dtype' is {dtype!r}; accepted: {', '.join(DTYPES)}")


def load(request: LoadRequest) -> Loaded:
    import torch

    name = request.recipe.get("dtype")
    dtype = getattr(torch, name) if name else default_dtype(request.model_path, request.device)
    model = load_pretrained(request.model_path, request.trust_remote_code, dtype=dtype, device_map=request.placement)
    model.eval()
    return Loaded(model, load_tokenizer(request.model_path, request.trust_remote_code), str(dtype).removeprefix("torch."),
                  kernel="Linear")

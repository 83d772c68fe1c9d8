"""A model folder whose config.json already carries a quantization_config (GPTQ, AWQ, bitsandbytes,
compressed-tensors as llm-compressor writes it, AutoRound).

Gated as it is, under the recipe ``prequantized``; the recipe may name a ``kernel``; nothing is quantized or
cached. A bitsandbytes checkpoint needs bitsandbytes only, not GPTQModel.
"""

from __future__ import annotations

from ..recipes import Recipe
from . import Loaded, LoadRequest
from .checkpoint import load_checkpoint, quantization_method
from .common import load_tokenizer, quantized_linear_classes

PREQUANTIZED = Recipe("prequantized", "prequantized", (),
                      "a checkpoint that carries its own quantization_config (GPTQ, AWQ, bitsandbytes, "
                      "compressed-tensors, AutoRound)")


def load(request: LoadRequest) -> Loaded:
    method = quantization_method(request.model_path)
    if method is None:
        raise ValueError(
            f"{request.model_path}: config.json has no quantization_config; recipe {PREQUANTIZED.name!r} needs a "
            "pre-quantized checkpoint"
        )
    model, method, kernel = load_checkpoint(request.model_path, request.device, request.recipe.get("kernel"),
                                            device_map=request.device_map,
                                            trust_remote_code=request.trust_remote_code)
    notes = {"method": method, "checkpoint": str(request.model_path)}
    if kernel:
        notes["kernel_requested"] = kernel
    return Loaded(
        model,
        load_tokenizer(request.model_path, request.trust_remote_code),
        str(model.dtype).removeprefix("torch."),
        kernel=kernel if method == "compressed-tensors" else quantized_linear_classes(model),
        notes=notes,
    )

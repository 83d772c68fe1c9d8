"""bitsandbytes 4-bit (nf4/fp4, optional double quant) and LLM.int8, on CUDA or CPU."""

from __future__ import annotations

from typing import Any

from . import Loaded, LoadRequest
from .common import default_dtype, load_tokenizer, quantized_linear_classes

BOOLEAN_FIELDS = ("load_in_4bit", "load_in_8bit", "bnb_4bit_use_double_quant", "llm_int8_has_fp16_weight",
                  "llm_int8_enable_fp32_cpu_offload", "dequantize")
# The plugin's own field: load quantized, then model.dequantize() (transformers): the weights go back to the
# compute dtype carrying the quantization's rounding, as the seed transformers-torch-quantize-save.md does.
PLUGIN_FIELDS = frozenset({"dequantize"})
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")


def validate(settings: dict[str, Any]) -> None:
    """Check a recipe's fields and build transformers' BitsAndBytesConfig from them, before any model loads."""
    for name in BOOLEAN_FIELDS:
        if name in settings and not isinstance(settings[name], bool):
            raise ValueError(f"field {name!r} is {settings[name]!r}; accepted: true or false")
    four, eight = bool(settings.get("load_in_4bit")), bool(settings.get("load_in_8bit"))
    if four == eight:
        raise ValueError("set exactly one of load_in_4bit = true or load_in_8bit = true"
                         + (" (both are set)" if four else ""))
    kind = settings.get("bnb_4bit_quant_type")
    if kind is not None and kind not in QUANT_TYPES:
        raise ValueError(f"field 'bnb_4bit_quant_type' is {kind!r}; accepted: {', '.join(QUANT_TYPES)}")
    dtype = settings.get("bnb_4bit_compute_dtype")
    if dtype is not None and dtype not in COMPUTE_DTYPES:
        raise ValueError(f"field 'bnb_4bit_compute_dtype' is {dtype!r}; accepted: {', '.join(COMPUTE_DTYPES)}")
    threshold = settings.get("llm_int8_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold <= 0):
        raise ValueError(f"field 'llm_int8_threshold' is {threshold!r}; accepted: a number > 0")
    from transformers import BitsAndBytesConfig

    try:
        BitsAndBytesConfig(**{k: v for k, v in settings.items() if k not in PLUGIN_FIELDS})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"transformers' BitsAndBytesConfig refuses these fields: {exc}") from None


def load(request: LoadRequest) -> Loaded:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = default_dtype(request.model_path, request.device)
    options = request.recipe.options
    dequantize = bool(options.pop("dequantize", False))
    if options.get("load_in_4bit"):
        options.setdefault("bnb_4bit_compute_dtype", dtype)
    config = BitsAndBytesConfig(**options)
    model = AutoModelForCausalLM.from_pretrained(
        request.model_path, quantization_config=config, dtype=dtype, device_map=request.placement
    )
    kernel = quantized_linear_classes(model)
    if dequantize:
        model = model.dequantize() or model
        kernel = f"Linear (dequantized from {kernel})"
    model.eval()
    return Loaded(model, load_tokenizer(request.model_path), str(dtype).removeprefix("torch."), kernel=kernel,
                  notes={"dequantized": True} if dequantize else {})

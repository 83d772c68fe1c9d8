"""bitsandbytes 4-bit (nf4/fp4, optional double quant) and LLM.int8, on CUDA or CPU."""

from __future__ import annotations

from . import Loaded, LoadRequest, default_dtype, load_tokenizer, quantized_linear_classes


def load(request: LoadRequest) -> Loaded:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = default_dtype(request.model_path, request.device)
    options = request.recipe.options
    if options.get("load_in_4bit"):
        options.setdefault("bnb_4bit_compute_dtype", dtype)
    config = BitsAndBytesConfig(**options)
    model = AutoModelForCausalLM.from_pretrained(
        request.model_path, quantization_config=config, dtype=dtype, device_map=request.device
    )
    model.eval()
    return Loaded(
        model,
        load_tokenizer(request.model_path),
        str(dtype).removeprefix("torch."),
        kernel=quantized_linear_classes(model),
    )

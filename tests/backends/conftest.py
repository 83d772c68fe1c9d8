"""The fp32 reference every backend test compares with."""

from __future__ import annotations

import pytest

from pytest_quant.models import TINY_DIR, embedded_eval_text

from .helpers import TOKENS


@pytest.fixture(scope="module")
def reference():
    """fp32 logits of the tiny model over the first 64 tokens of the eval text, and its footprint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    text = embedded_eval_text().read_text(encoding="utf-8")[: TOKENS * 16]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :TOKENS]
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(ids).logits.float()
    return {"ids": ids, "logits": logits, "footprint": model.get_memory_footprint()}

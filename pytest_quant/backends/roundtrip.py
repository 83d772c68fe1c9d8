"""Checks of saved GPTQ/AWQ checkpoints: save and reload, and GPTQModel's reading against transformers'."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..hardware import device_kind, free_device_memory
from . import Loaded
from .checkpoint import quantization_method
from .common import load_tokenizer, quantized_linear_classes
from .checkpoint import load_checkpoint
from .gptqmodel_spec import import_gptqmodel, resolve_kernel


@dataclass(frozen=True)
class RoundTrip:
    """Logits of one quantized model read two ways (before and after a save, or by two loaders)."""

    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float
    tokens: int
    atol: float
    kernel_before: str
    kernel_after: str

    @property
    def ok(self) -> bool:
        return self.max_abs_logit_diff <= self.atol


# -- checks of the saved checkpoints ----------------------------------------------------------------------

def roundtrip_check(loaded: Loaded, saved_path: Path, device: str, *, atol: float | None = None,
                    input_ids=None, tokens: int = 128) -> RoundTrip:
    """Save ``loaded.model`` with ``save_pretrained`` into ``saved_path``, reload it, compare logits.

    The reload uses the same dtype and kernel, so the same arithmetic should give the same logits; a
    difference beyond ``atol`` means saving or loading changed the weights. The default ``atol`` is 1e-4
    on CPU, where the torch kernels repeat bit for bit, and 0.05 on CUDA, where the Triton kernels do
    not (about two float16 steps of a logit near 10). Without ``input_ids`` the first ``tokens`` tokens
    of the embedded evaluation text are used.
    """
    if atol is None:
        atol = 1e-4 if device_kind(device) == "cpu" else 0.05
    saved_path = Path(saved_path)
    loaded.model.save_pretrained(saved_path)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(saved_path)
    kernel = loaded.notes.get("kernel_requested")
    reloaded, _, _ = load_checkpoint(saved_path, device, kernel, dtype=loaded.model.dtype)
    try:
        return _compare(loaded.model, reloaded, saved_path, atol, input_ids, tokens)
    finally:
        del reloaded
        free_device_memory(device)


def loader_agreement(checkpoint: Path, device: str, *, kernel: str | None = None, dtype=None, atol: float = 0.25,
                     input_ids=None, tokens: int = 128) -> RoundTrip:
    """Logits of a GPTQ/AWQ checkpoint as GPTQModel (its writer) reads it vs as transformers reads it.

    The plugin measures the transformers-loaded model; this checks that it is the model GPTQModel made.
    Both load with the same kernel and dtype (default: bfloat16 on CPU, where GPTQModel refuses float32
    for the torch kernel, float16 on CUDA). GPTQModel casts GPTQ's float16 scales to that dtype while
    transformers keeps them, so ``atol`` allows for bfloat16 rounding.
    """
    import torch

    checkpoint = Path(checkpoint)
    method = quantization_method(checkpoint)
    if method not in ("gptq", "awq"):
        raise ValueError(f"{checkpoint}: not a GPTQ or AWQ checkpoint (quantization method {method!r})")
    dtype = dtype or (torch.bfloat16 if device_kind(device) == "cpu" else torch.float16)
    saved = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
    kernel = resolve_kernel(method, kernel, device, int(saved.get("bits", 4)), str(checkpoint))
    ours, _, _ = load_checkpoint(checkpoint, device, kernel, dtype=dtype)
    writer = import_gptqmodel().GPTQModel.load(str(checkpoint), backend=kernel, device=device, dtype=dtype,
                                         trust_remote_code=False)
    try:
        return _compare(writer.model, ours, checkpoint, atol, input_ids, tokens)
    finally:
        del writer, ours
        free_device_memory(device)


def _compare(before, after, tokenizer_path: Path, atol: float, input_ids, tokens: int) -> RoundTrip:
    import torch

    if input_ids is None:
        from ..models import embedded_eval_text

        tokenizer = load_tokenizer(tokenizer_path)
        text = embedded_eval_text().read_text(encoding="utf-8")[: tokens * 16]
        input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :tokens]
    with torch.inference_mode():
        a = before(input_ids.to(before.device)).logits.float().cpu()
        b = after(input_ids.to(after.device)).logits.float().cpu()
    diff = (a - b).abs()
    return RoundTrip(
        max_abs_logit_diff=float(diff.max()),
        mean_abs_logit_diff=float(diff.mean()),
        top1_agreement=float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        tokens=int(input_ids.numel()),
        atol=atol,
        kernel_before=quantized_linear_classes(before),
        kernel_after=quantized_linear_classes(after),
    )

"""What the backends' tests share: duck-typed load requests (``model_path``, ``recipe`` with ``options``/``get``,
``device``, ``cache_dir``, ``calibration_text``, ``before_load``: what every backend's ``load`` reads) and the
check of a loaded model against the fp32 reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_quant.models import TINY_DIR

TOKENS = 64


@dataclass(frozen=True)
class StubRecipe:
    settings: dict[str, Any]
    name: str = "stub"

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.settings)


@dataclass
class StubRequest:
    recipe: StubRecipe
    model_path: Path = TINY_DIR
    device: str = "cpu"
    cache_dir: Path | None = None
    calibration_text: Path | None = None
    before_load_calls: list = field(default_factory=list)
    device_map: str | None = None
    trust_remote_code: bool = False

    @property
    def placement(self) -> str:  # as LoadRequest's
        return self.device_map or self.device

    def before_load(self) -> None:
        self.before_load_calls.append(True)


def request_for(device: str = "cpu", cache_dir: Path | None = None, **settings) -> StubRequest:
    return StubRequest(StubRecipe(settings), device=device, cache_dir=cache_dir)


def check_loaded(loaded, reference, min_top1: float = 0.5, trim_atol: float = 1e-3) -> float:
    """A forward over 64 tokens, one cached decode step; logits finite, top-1 close to fp32, smaller.

    ``trim_atol``: how far the last 8 positions' logits may move when only they are asked for. Per-tensor
    dynamic activation quantization (torch.ao, ONNX Runtime) takes one scale over every row it is given,
    so the lm_head's input scale, and the logits, depend on how many rows there are.
    """
    import torch

    model, ids = loaded.model, reference["ids"]
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        logits = out.logits.float()
        assert logits.shape == reference["logits"].shape
        assert torch.isfinite(logits).all()
        step = model(out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
        assert step.logits.shape[1] == 1 and torch.isfinite(step.logits).all()
        trimmed = model(input_ids=ids, use_cache=False, logits_to_keep=8).logits
        assert trimmed.shape[1] == 8
        torch.testing.assert_close(trimmed.float(), logits[:, -8:], atol=trim_atol, rtol=1e-3)
    top1 = float((logits.argmax(-1) == reference["logits"].argmax(-1)).float().mean())
    assert top1 > min_top1, f"top-1 agreement with fp32 {top1:.2%}"
    footprint = int(model.get_memory_footprint())
    assert footprint < reference["footprint"], f"footprint {footprint} not below fp32 {reference['footprint']}"
    # Measured at load; INC's layers add a few KiB of buffers on their first forward (0.25% on tiny).
    assert footprint == pytest.approx(loaded.notes.get("footprint_bytes", footprint), rel=0.01)
    return top1


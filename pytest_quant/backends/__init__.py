"""A light registry of quantization backends, each imported only when a recipe of it is loaded.

Every backend module provides ``REQUIRES`` (import names it needs), ``INSTALL_HINT``, ``DEVICES``
(``"cpu"``/``"cuda"``) and ``load(request) -> Loaded``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..recipes import Recipe

# name -> (module, import names it needs, install hint, device kinds it runs on)
REGISTRY: dict[str, tuple[str, tuple[str, ...], str, frozenset[str]]] = {
    "reference": ("pytest_quant.backends.reference", (), "", frozenset({"cpu", "cuda"})),
    "bitsandbytes": (
        "pytest_quant.backends.bitsandbytes",
        ("bitsandbytes",),
        "pip install 'pytest-quant[bnb]'",
        frozenset({"cpu", "cuda"}),
    ),
    "gptqmodel": (
        "pytest_quant.backends.gptqmodel",
        ("gptqmodel", "optimum"),
        "pip install 'pytest-quant[gptq]'",
        frozenset({"cpu", "cuda"}),
    ),
}


@dataclass(frozen=True)
class LoadRequest:
    model_path: Path
    recipe: Recipe
    device: str  # "cpu" or "cuda:N"
    cache_dir: Path | None = None  # where quantized models may be cached (backends that quantize)
    calibration_text: Path | None = None
    # Called right before the model that will be measured starts loading, after any quantization:
    # memory is measured from there, so a one-off quantization does not count against a VRAM budget.
    before_load: Callable[[], None] = lambda: None


@dataclass
class Loaded:
    """What a backend hands back: the live model and what it knows about how it was made."""

    model: Any
    tokenizer: Any
    dtype: str
    kernel: str = ""  # the class of the quantized linear layers that ran
    quantize_seconds: float = 0.0
    cache: str = ""  # "hit", "miss" or "" where nothing is cached
    notes: dict[str, Any] = field(default_factory=dict)


def device_kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def missing_requirements(backend: str) -> list[str]:
    """Import names the backend needs that are not installed (checked without importing them)."""
    _, requires, _, _ = REGISTRY[backend]
    return [name for name in requires if importlib.util.find_spec(name) is None]


def install_hint(backend: str) -> str:
    return REGISTRY[backend][2]


def supports(backend: str, device: str) -> bool:
    return device_kind(device) in REGISTRY[backend][3]


def load(request: LoadRequest) -> Loaded:
    module = importlib.import_module(REGISTRY[request.recipe.backend][0])
    if not getattr(module, "CALLS_BEFORE_LOAD", False):  # backends that quantize first call it themselves
        request.before_load()
    return module.load(request)


def default_dtype(model_path: Path, device: str):
    """fp32 on CPU; on GPU the checkpoint's own 16-bit dtype, else bf16."""
    import json

    import torch

    if device_kind(device) == "cpu":
        return torch.float32
    try:
        config = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    name = config.get("dtype") or config.get("torch_dtype")
    return torch.float16 if name == "float16" else torch.bfloat16


def load_tokenizer(model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


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

"""A quantized KV cache: the formats a recipe's ``kv_cache`` field names, and the transformers cache each makes.

Every format is transformers' ``QuantizedCache`` through HQQ (``pip install 'pytest-quant[kv]'``): keys and values
quantized in groups of 64 along the head dimension (each token's own, so a sequence's figures do not depend on
what it is batched with), the newest ``residual_length`` (128) tokens kept in the model's precision and folded
into the quantized part each time they fill up, as KIVI does; the prompt's states are quantized right after its
prefill. transformers' ``fp8`` cache is left out: its one per-tensor scale is frozen on the first update, which
in a token-by-token decode is one token's amplitude. The residual must be shorter than the eval window, or the
evaluation would score tokens whose cache was never quantized: ``check_window`` refuses that. Light at import: torch and transformers are
imported by ``new_cache``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class KvFormat:
    name: str
    backend: str  # QuantizedCache's backend
    nbits: int | None  # None: the backend's only width
    requires: tuple[str, ...]  # import names
    description: str
    residual_length: int | None = 128  # tokens kept unquantized (None: none)
    group_size: int | None = 64

    @property
    def label(self) -> str:
        residual = f", residual {self.residual_length}" if self.residual_length else ""
        group = f" g{self.group_size}" if self.group_size else ""
        return f"KV cache {self.name} ({self.backend}{group}{residual})"


INSTALL_HINT = "pip install 'pytest-quant[kv]'"
FORMATS: dict[str, KvFormat] = {f.name: f for f in (
    KvFormat("int8", "hqq", 8, ("hqq",), "8-bit integer keys and values (HQQ), groups of 64"),
    KvFormat("int4", "hqq", 4, ("hqq",), "4-bit integer keys and values (HQQ), groups of 64"),
    KvFormat("int2", "hqq", 2, ("hqq",), "2-bit integer keys and values (HQQ), groups of 64"),
)}
AXIS = 1  # HQQ's groups along the last dimension: each token's own head channels
EAGER_REASON = ("a quantized KV cache grows and re-quantizes as it decodes: it has no static shape to compile or "
                "capture, so decode is timed eagerly (and compared with the reference timed eagerly)")


def parse(value: Any) -> KvFormat:
    """The format a recipe's ``kv_cache`` names; ValueError naming the value and what is accepted."""
    if not isinstance(value, str):
        raise ValueError(f"field 'kv_cache' is {value!r} ({type(value).__name__}); it must be a string, one of "
                         f"{', '.join(map(repr, FORMATS))}")
    if value not in FORMATS:
        raise ValueError(f"field 'kv_cache' is {value!r}; accepted: {', '.join(map(repr, FORMATS))}")
    return FORMATS[value]


def missing(fmt: KvFormat) -> list[str]:
    import importlib.util

    return [name for name in fmt.requires if importlib.util.find_spec(name) is None]


def check_window(fmt: KvFormat, context_tokens: int) -> None:
    """The cache must be quantized within an eval window: its residual shorter than the window."""
    if fmt.residual_length is not None and fmt.residual_length >= context_tokens:
        raise ValueError(f"KV cache {fmt.name}: its residual of {fmt.residual_length} unquantized tokens is not "
                         f"shorter than the eval window of {context_tokens} tokens, so no scored token would read a "
                         "quantized cache; use a model with a longer context")


def cache_factory(fmt: KvFormat, model) -> Callable[[], Any]:
    """A function that makes a fresh, empty quantized cache for ``model`` (one per sequence batch)."""
    from transformers import QuantizedCache

    options: dict[str, Any] = {}
    if fmt.nbits is not None:
        options = {"nbits": fmt.nbits, "q_group_size": fmt.group_size, "residual_length": fmt.residual_length,
                   "axis_key": AXIS, "axis_value": AXIS}
    config = model.config
    return lambda: QuantizedCache(fmt.backend, config, **options)

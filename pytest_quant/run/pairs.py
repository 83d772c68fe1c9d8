"""Which model x recipe runs (``Pair``), and which model has an unquantized reference."""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.checkpoint import quantization_method
from ..backends.prequantized import PREQUANTIZED
from ..models import ModelSource
from ..recipes import BUILTIN_RECIPES, Recipe


@dataclass(frozen=True)
class Pair:
    model: ModelSource
    recipe: Recipe

    @property
    def id(self) -> str:
        return f"{self.model.name}-{self.recipe.name}"


class Pairing:
    """The session's pairs: every model under every recipe, except that a checkpoint that is already quantized
    is gated as it is, under the recipe ``prequantized``, and has no reference."""

    def __init__(self, models: list[ModelSource], recipes: list[Recipe]):
        self.pairs: list[Pair] = [p for m in models for p in _pairs_of(m, recipes)]
        self._prequantized = frozenset(p.model for p in self.pairs if p.recipe is PREQUANTIZED)

    def reference_of(self, model: ModelSource) -> Pair | None:
        """The model's unquantized reference, None for a pre-quantized checkpoint."""
        return None if model in self._prequantized else Pair(model, BUILTIN_RECIPES["reference"])


def _pairs_of(model: ModelSource, recipes: list[Recipe]) -> list[Pair]:
    if quantization_method(model.path) is not None:
        return [Pair(model, PREQUANTIZED)]
    return [Pair(model, r) for r in recipes]

"""Which model x recipe runs (``Pair``), and which reference each pair is compared with."""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.checkpoint import quantization_method
from ..backends.llama_cpp_spec import GGUF_PREQUANTIZED
from ..backends.prequantized import PREQUANTIZED
from ..models import ModelSource, is_gguf_file
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
    (a quantized GGUF file too) is gated as it is, under the recipe ``prequantized`` (``gguf-prequantized``), and
    has no reference."""

    def __init__(self, models: list[ModelSource], recipes: list[Recipe]):
        self.pairs: list[Pair] = [p for m in models for p in _pairs_of(m, recipes)]
        self._prequantized = frozenset(p.model for p in self.pairs if p.recipe in (PREQUANTIZED, GGUF_PREQUANTIZED))

    def reference_of(self, model: ModelSource, recipe: Recipe | None = None) -> Pair | None:
        """The reference ``recipe`` of ``model`` is compared with (None: the Hugging Face one): the unquantized
        model, or for a GGUF recipe the unquantized GGUF run by llama.cpp. None for a pre-quantized checkpoint, for
        the Hugging Face reference itself, and for the Hugging Face reference of a model that is a GGUF file."""
        if model in self._prequantized:
            return None
        name = "reference" if recipe is None else recipe.compared_with
        if recipe is not None and ((recipe.backend == "reference" and recipe.kv_cache is None) or recipe.name == name):
            return None
        if name == "reference" and is_gguf_file(model.path):
            return None
        return Pair(model, BUILTIN_RECIPES[name])


def _pairs_of(model: ModelSource, recipes: list[Recipe]) -> list[Pair]:
    if is_gguf_file(model.path):
        from ..models.gguf_header import read_header

        return [Pair(model, r) for r in recipes] if read_header(model.path).unquantized else [Pair(model, GGUF_PREQUANTIZED)]
    if quantization_method(model.path) is not None:
        return [Pair(model, PREQUANTIZED)]
    return [Pair(model, r) for r in recipes]

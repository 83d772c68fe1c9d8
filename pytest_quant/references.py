"""The unquantized references: each model's measured once per session, before any variant of it loads.

What to measure of a reference is decided once, after collection, from every collected test's markers
(and whether a test asks for ``quant_reference``); its log-probabilities over the eval windows are kept
for every recipe's KL divergence, and its greedy generations for every recipe's generation agreement.
"""

from __future__ import annotations

from typing import Any

from .metrics import Measurements
from .models import ModelSource

# Always measured: its log-probabilities serve every recipe's KL, and its memory costs nothing more.
ALWAYS = frozenset({"quality", "vram"})


class References:
    """The references of one session (``session`` is the ``QuantSession`` that loads and measures them)."""

    def __init__(self, session: Any, needs: frozenset[str] = frozenset()):
        self._session = session
        self.needs = ALWAYS | needs
        self._logprobs: dict[str, Any] = {}
        self._generations: dict[tuple[str, int], Any] = {}  # (model, tokens) -> measure.generation.Generations

    def plan(self, needs: frozenset[str]) -> None:
        """What every reference must have measured: set once, after collection."""
        self.needs = ALWAYS | needs

    def has(self, model: ModelSource) -> bool:
        """Whether the model has an unquantized reference (a pre-quantized checkpoint has none)."""
        return self._session.reference_pair(model) is not None

    def measured(self, model: ModelSource) -> bool:
        m = self._session.known(self._session.reference_pair(model))
        return model.name in self._logprobs and all(m.has(need) for need in self.needs)

    def ensure(self, model: ModelSource) -> Measurements:
        """The reference's measurements, loading and measuring it first when this session has not yet."""
        pair = self._session.reference_pair(model)
        if pair is None:
            raise LookupError(f"{model.name} is a pre-quantized checkpoint: it has no unquantized reference")
        if not self.measured(model):
            live = self._session.live
            if live is not None and live.recipe is pair.recipe and live._pair == pair:
                self._session.measure(live, self.needs)
            else:
                self._session.close(self._session.open(pair))  # opening a reference measures self.needs
        return self._session.known(pair)

    def keep_logprobs(self, model: ModelSource, logprobs: Any) -> None:
        self._logprobs[model.name] = logprobs

    def logprobs(self, model: ModelSource) -> Any:
        """The reference's log-probabilities over the eval windows, or None for a model without a reference."""
        return self._logprobs.get(model.name)

    def keep_generations(self, model: ModelSource, tokens: int, generations: Any) -> None:
        self._generations[(model.name, tokens)] = generations

    def generations(self, model: ModelSource, tokens: int) -> Any:
        """The reference's greedy generations of ``tokens`` tokens on the session's prompts, or None."""
        return self._generations.get((model.name, tokens))

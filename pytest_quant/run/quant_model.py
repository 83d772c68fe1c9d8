"""The ``quant_model`` fixture's value."""

from __future__ import annotations

from typing import Callable

from ..metrics import Measurements
from .live import LiveModel


class QuantModel:
    """A loaded model under one recipe, and its measurements.

    Documented: ``.model``, ``.tokenizer``, ``.recipe``, ``.device`` and ``.measurements`` (everything
    measured so far, a ``pytest_quant.metrics.Measurements``); ``.quality``, ``.vram`` and ``.throughput``
    measure on first use. ``.model`` and ``.tokenizer`` are None once the fixture released the model.
    """

    def __init__(self, live: LiveModel, measure: Callable[[frozenset[str]], Measurements],
                 known: Callable[[], Measurements]):
        self.live = live
        self._measure = measure
        self._known = known
        self.recipe = live.pair.recipe
        self.device = live.device

    def __repr__(self) -> str:
        return f"<QuantModel {self.live.pair.id} on {self.device}>"

    @property
    def pair(self):
        return self.live.pair

    @property
    def model(self):
        return self.live.model

    @property
    def tokenizer(self):
        return self.live.tokenizer

    @property
    def measurements(self) -> Measurements:
        return self._known()

    def measure(self, needs: frozenset[str]) -> Measurements:
        return self._measure(frozenset(needs))

    @property
    def quality(self):
        return self._measure(frozenset({"quality"})).quality

    @property
    def vram(self):
        return self._measure(frozenset({"vram"})).vram

    @property
    def throughput(self):
        return self._measure(frozenset({"throughput"})).throughput

"""The one writer of ``Measurements``: what is known of each model x recipe, written only here."""

from __future__ import annotations

import dataclasses

from ..metrics import Measurements
from .pairs import Pair, Pairing


class Ledger:
    """Figures by pair. ``record`` adds figures (measured now or restored from a cache); ``known`` reads a pair's
    figures with its reference's beside them."""

    def __init__(self, pairing: Pairing, device_label):
        self._pairing = pairing
        self._device_label = device_label  # a callable: the placement is known only once CUDA is asked
        self._known: dict[str, Measurements] = {}
        self._releases_reported: set[str] = set()

    def _blank(self, pair: Pair) -> Measurements:
        return Measurements(pair.model.name, pair.recipe.name, self._device_label(),
                            is_reference=pair.recipe.is_reference)

    def record(self, pair: Pair, **figures) -> Measurements:
        updated = dataclasses.replace(self._known.get(pair.id) or self._blank(pair), **figures)
        self._known[pair.id] = updated
        return updated

    def own(self, pair: Pair) -> Measurements:
        """The pair's own figures, without its reference's."""
        return self._known.get(pair.id) or self._blank(pair)

    def known(self, pair: Pair) -> Measurements:
        """What is measured of ``pair`` so far, with its reference's figures beside."""
        m = self.own(pair)
        ref = self._pairing.reference_of(pair.model, pair.recipe)  # gguf-reference: the Hugging Face one beside
        if ref is not None and ref.id in self._known:
            m = dataclasses.replace(m, reference=self._known[ref.id])
        return m

    def unreported_releases(self) -> dict[str, float]:
        """Release seconds by pair id, of the models released since the last call (each reported once)."""
        new = {pid: m.release_s for pid, m in self._known.items()
               if m.release_s is not None and pid not in self._releases_reported}
        self._releases_reported.update(new)
        return new

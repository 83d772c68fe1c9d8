"""A model x recipe (``Pair``), the ``quant_model`` fixture's value (``QuantModel``), and who holds a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .metrics import Measurements
from .models import ModelSource
from .recipes import Recipe


@dataclass(frozen=True)
class Pair:
    model: ModelSource
    recipe: Recipe

    @property
    def id(self) -> str:
        return f"{self.model.name}-{self.recipe.name}"


def holders(obj) -> list[str]:
    """What still references ``obj``: module globals by dotted name, any other holder by its type."""
    import gc
    import sys
    import types

    # sys.modules may hold objects that are not modules (Cython's parallel helper, lazy loaders): name what
    # has a name, never fail the release check over it
    modules = {id(m.__dict__): name for name, m in list(sys.modules.items())
               if isinstance(m, types.ModuleType) and isinstance(getattr(m, "__dict__", None), dict)}
    found = []
    for ref in gc.get_referrers(obj):  # plain loops: a comprehension would hold obj in a cell of its own
        if id(ref) in modules:
            for name, value in list(ref.items()):
                if value is obj:
                    found.append(f"{modules[id(ref)]}.{name}")
        elif not isinstance(ref, types.FrameType):
            found.append(f"a {type(ref).__name__}")
    return found


class QuantModel:
    """The ``quant_model`` fixture's value: a loaded model under one recipe, and its measurements.

    Documented: ``.model``, ``.tokenizer``, ``.recipe``, ``.device`` and ``.measurements`` (everything
    measured so far, a ``pytest_quant.metrics.Measurements``); ``.quality``, ``.vram`` and ``.throughput``
    measure on first use. Everything else is private.
    """

    def __init__(self, session: Any, pair: Pair, loaded, tracker):
        self._session = session
        self._pair = pair
        self._tracker = tracker
        self._allocated_before_bytes = tracker.allocated_before_bytes  # what close() expects to be left
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.recipe = pair.recipe
        self.device = session.options.device

    def __repr__(self) -> str:
        return f"<QuantModel {self._pair.id} on {self.device}>"

    @property
    def measurements(self) -> Measurements:
        return self._session.known(self._pair)

    @property
    def quality(self):
        return self._session.measure(self, frozenset({"quality"})).quality

    @property
    def vram(self):
        return self._session.measure(self, frozenset({"vram"})).vram

    @property
    def throughput(self):
        return self._session.measure(self, frozenset({"throughput"})).throughput



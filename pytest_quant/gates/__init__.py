"""The gates: markers and their parsers (``markers``), the pure checks of memory and speed (``checks``) and of
quality (``quality``), one-sided confidence bounds (``bounds``), and what a marker becomes (``limits``)."""

from .limits import Limits, Violation
from .markers import MARKERS, ItemGates, MarkerError, MarkerSpec, check, gates_of, parse

__all__ = ["MARKERS", "ItemGates", "Limits", "MarkerError", "MarkerSpec", "Violation", "check", "gates_of", "parse"]

"""A figure against a limit, with or without ``confidence=``: which side of it the point estimate and its
one-sided confidence bound fall, and how a failure reads. Pure; no pytest, no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..measure.stats import lower_bound, tokens_to_decide, upper_bound


@dataclass(frozen=True)
class Verdict:
    """A failed comparison: the point estimate itself broke the limit, or only its confidence bound did."""

    point_breaks: bool
    bound: float | None = None  # the one-sided bound (None without confidence)
    confidence: float | None = None
    tokens: int = 0  # tokens the figure was measured over
    tokens_to_decide: int | None = None  # about how many would make the bound clear the limit
    lower: bool = False  # a floor (the lower bound is checked), not a ceiling

    def wording(self, show: Callable[[float], str]) -> str:
        """What to add to the failure's sentence; empty without confidence."""
        if self.bound is None:
            return ""
        side = "lower" if self.lower else "upper"
        bound = f"{100 * self.confidence:g}% {side} bound {show(self.bound)}"
        if self.point_breaks:
            return f" (the point estimate itself; {bound})"
        decide = (f"; about {self.tokens_to_decide} tokens would decide" if self.tokens_to_decide is not None else "")
        return f": only its {bound} does: inconclusive at {self.tokens} tokens{decide}"


def judge(point: float, limit: float, *, lower: bool = False, confidence: float | None = None,
          se: float | None = None, tokens: int = 0, bound: float | None = None) -> Verdict | None:
    """None when the figure passes: without ``confidence`` the point estimate is on the right side of ``limit``
    (at most a ceiling, at least a floor); with it, its one-sided bound is too. ``bound`` overrides the normal
    bound ``point -/+ z se`` (the Wilson bound of a proportion); ``se`` then still estimates the tokens needed."""
    breaks = not point >= limit if lower else not point <= limit  # a NaN figure breaks every limit
    if confidence is None:
        return Verdict(True) if breaks else None
    if bound is None:
        bound = lower_bound(point, se, confidence) if lower else upper_bound(point, se, confidence)
    if not breaks and not (bound < limit if lower else bound > limit) and not math.isnan(bound):
        return None
    needed = None if breaks or se is None else tokens_to_decide(point, se, tokens, limit, confidence, lower=lower)
    return Verdict(breaks, bound, confidence, tokens, needed, lower)

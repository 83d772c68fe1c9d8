"""The task and layer markers' pure checks: task_accuracy (the paired difference of the task's accuracy against
the reference's, judged by its one-sided bound; measure.paired) and layer_error (each decoder layer's own SQNR
and cosine against the reference's; measure.layers)."""

from __future__ import annotations

import math

from ..measure.paired import accuracy_lower_bound, drop_upper_bound, items_to_decide
from ..metrics import Measurements
from .limits import Limits, Violation

DEFAULT_TASK_CONFIDENCE = 0.95
TASK_SCORES = ("acc", "acc_norm")


def check_task_accuracy(m: Measurements, limits: Limits) -> list[Violation]:
    t = m.tasks
    score, conf = limits.options.get("score", "acc"), limits.options.get("confidence", DEFAULT_TASK_CONFIDENCE)
    p = t.score(score)
    level = f"{100 * conf:g}%"
    figures = (f"{t.task} {score} {100 * p.accuracy:.1f}±{100 * p.accuracy_se:.1f}% against the reference's "
               f"{100 * p.reference_accuracy:.1f}±{100 * p.reference_accuracy_se:.1f}%")
    out = []
    max_drop = limits.values.get("max_drop")
    if max_drop is not None:
        bound = drop_upper_bound(p, conf)
        drop, upper = 100 * bound.drop, 100 * bound.bound
        how = (f"exact from {p.discordant} discordant items" if bound.exact else "from the paired SE")
        said = (f"{figures}: a drop of {drop:+.1f}±{100 * p.difference_se:.1f} points ({p.losses} items lost, "
                f"{p.gains} gained of {p.items}; McNemar p={p.mcnemar_p:.3g})")
        if not drop <= max_drop:
            out.append(Violation("task_accuracy", f"{said}, above max_drop {max_drop:g} points (the point estimate "
                                 f"itself; {level} upper bound {upper:.1f}, {how}) {m.where}", drop, max_drop, "points"))
        elif not upper <= max_drop:
            needed = items_to_decide(drop, 100 * p.difference_se, p.items, max_drop, conf)
            decide = f"; about {needed} items would decide" if needed is not None else ""
            out.append(Violation("task_accuracy", f"{said}, within max_drop {max_drop:g} points: only its {level} "
                                 f"upper bound {upper:.1f} ({how}) is above it: inconclusive at {p.items} items{decide} "
                                 f"{m.where}", upper, max_drop, "points"))
    floor = limits.values.get("min_accuracy")
    if floor is not None:
        accuracy, lower = 100 * p.accuracy, 100 * accuracy_lower_bound(p, conf)
        if not accuracy >= floor:
            out.append(Violation("task_accuracy", f"{figures}, below min_accuracy {floor:g}% (the point estimate "
                                 f"itself; {level} Wilson lower bound {lower:.1f}%) {m.where}", accuracy, floor,
                                 "percent"))
        elif not lower >= floor:
            needed = items_to_decide(accuracy, 100 * p.accuracy_se, p.items, floor, conf, lower=True)
            decide = f"; about {needed} items would decide" if needed is not None else ""
            out.append(Violation("task_accuracy", f"{figures}, above min_accuracy {floor:g}%: only its {level} Wilson "
                                 f"lower bound {lower:.1f}% is below it: inconclusive at {p.items} items{decide} "
                                 f"{m.where}", lower, floor, "percent"))
    return out


def check_layer_error(m: Measurements, limits: Limits) -> list[Violation]:
    errors = m.layers
    if errors is None or not errors.layers:
        why = "not measured" if errors is None else errors.skipped
        return [Violation("layer_error", f"layer errors could not be compared: {why} {m.where}", math.nan, math.nan, "")]
    out = []
    for key, label, read, unit, show in (("min_sqnr_db", "own SQNR", lambda e: e.sqnr_db, "dB", lambda v: f"{v:.1f} dB"),
                                         ("min_cosine", "own cosine", lambda e: e.cosine, "cosine", lambda v: f"{v:.5f}")):
        floor = limits.values.get(key)
        if floor is None:
            continue
        below = sorted((e for e in errors.layers if not read(e) >= floor), key=read)
        if below:
            worst = below[0]
            others = f"; also {', '.join(f'{e.name} {show(read(e))}' for e in below[1:4])}" if len(below) > 1 else ""
            out.append(Violation("layer_error", f"{worst.name} {label} {show(read(worst))} below {key} {show(floor)} "
                                 f"(cumulative SQNR there {worst.cumulative_sqnr_db:.1f} dB; {len(below)} of "
                                 f"{len(errors.layers)} layers below, lm_head included{others}) {m.where}",
                                 read(worst), floor, unit))
    return out

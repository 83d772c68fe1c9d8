"""gates.tasks: task_accuracy and layer_error on constructed figures, just above and just below each limit."""

from __future__ import annotations

import dataclasses
import math

import pytest

from pytest_quant.gates import MARKERS, MarkerError, check, parse
from pytest_quant.measure.layers import LayerError, LayerErrors
from pytest_quant.measure.paired import PairedAccuracy, drop_upper_bound
from pytest_quant.measure.tasks import TaskMeasurement
from pytest_quant.metrics import Measurements


def _tasks(items: int, reference_correct: int, losses: int, gains: int) -> TaskMeasurement:
    p = PairedAccuracy(items, reference_correct - losses + gains, reference_correct, losses, gains)
    return TaskMeasurement("cloze", items, items, p, p, {"acc": (), "acc_norm": ()}, 1.0)


def _pair(tasks=None, layers=None) -> Measurements:
    reference = Measurements("tiny", "reference", "cpu", is_reference=True)
    return Measurements("tiny", "rtn", "cpu", tasks=tasks, layers=layers, reference=reference)


def _check(marker: str, m: Measurements, **kwargs):
    return check(parse(MARKERS[marker], (), kwargs), m)


def test_a_drop_over_max_drop_fails_and_one_under_passes():
    m = _pair(_tasks(1000, 600, 60, 20))  # a 4-point drop, 80 discordant items: the paired SE's bound
    bound = 100 * drop_upper_bound(m.tasks.acc, 0.95).bound
    (violation,) = _check("task_accuracy", m, max_drop=3.9)
    assert "a drop of +4.0±" in violation.reason and "the point estimate itself" in violation.reason
    assert "60 items lost, 20 gained of 1000; McNemar p=" in violation.reason
    assert _check("task_accuracy", m, max_drop=bound + 0.01) == []
    (inconclusive,) = _check("task_accuracy", m, max_drop=bound - 0.01)
    assert "only its 95% upper bound" in inconclusive.reason and "inconclusive at 1000 items" in inconclusive.reason
    assert "items would decide" in inconclusive.reason


def test_few_discordant_items_are_judged_by_the_exact_bound():
    m = _pair(_tasks(400, 250, 3, 1))
    (violation,) = _check("task_accuracy", m, max_drop=1.0, confidence=0.9)
    assert "exact from 4 discordant items" in violation.reason
    bound = 100 * drop_upper_bound(m.tasks.acc, 0.9).bound
    assert f"90% upper bound {bound:.1f}" in violation.reason


def test_min_accuracy_is_judged_by_the_wilson_bound():
    from pytest_quant.measure.stats import wilson_lower_bound

    m = _pair(_tasks(400, 250, 0, 0))  # 62.5%
    lower = 100 * wilson_lower_bound(250, 400, 0.95)
    assert _check("task_accuracy", m, min_accuracy=lower - 0.01) == []
    (only_bound,) = _check("task_accuracy", m, min_accuracy=lower + 0.01)
    assert "only its 95% Wilson lower bound" in only_bound.reason
    (point,) = _check("task_accuracy", m, min_accuracy=62.6)
    assert "below min_accuracy 62.6%" in point.reason


def test_the_reference_itself_is_gated_only_by_its_absolute_accuracy():
    reference = dataclasses.replace(_pair(_tasks(400, 250, 0, 0)), recipe="reference", is_reference=True, reference=None)
    assert _check("task_accuracy", reference, max_drop=0) == []
    assert len(_check("task_accuracy", reference, max_drop=0, min_accuracy=70)) == 1


def test_task_accuracy_arguments_are_checked():
    limits = parse(MARKERS["task_accuracy"], (), {"max_drop": 2})
    assert limits.options == {"confidence": 0.95, "score": "acc"} and limits.needs == frozenset({"tasks"})
    for bad, says in (({"max_drop": 2, "score": "f1"}, "accepted: 'acc', 'acc_norm'"),
                      ({"max_drop": 2, "confidence": 0.3}, "one-sided confidence level"),
                      ({"min_accuracy": 101}, "at most 100"), ({"max_drop": -1}, ">= 0"),
                      ({"max_drop": 2, "vs": "baseline"}, "has no stored baseline")):
        with pytest.raises(MarkerError) as error:
            parse(MARKERS["task_accuracy"], (), bad)
        assert says in str(error.value)


def _layers(**own) -> LayerErrors:
    return LayerErrors(tuple(LayerError(name, db, 1 - 10 ** (-db / 10), db - 1, 0.99) for name, db in own.items()), 128)


def test_layer_error_names_the_worst_layer_below_the_floor():
    m = _pair(layers=_layers(**{"layers.0": 40.0, "layers.3": 12.5, "layers.4": 19.0, "lm_head": 35.0}))
    (violation,) = _check("layer_error", m, min_sqnr_db=20)
    assert violation.reason.startswith("layers.3 own SQNR 12.5 dB below min_sqnr_db 20.0 dB")
    assert "2 of 4 layers below" in violation.reason and "also layers.4 19.0 dB" in violation.reason
    assert _check("layer_error", m, min_sqnr_db=12.4) == []
    (cos,) = _check("layer_error", m, min_cosine=0.99)
    assert cos.reason.startswith("layers.3 own cosine")


def test_layer_error_without_layer_data_fails_with_the_reason():
    m = _pair(layers=LayerErrors(skipped="the reference kept no layer data"))
    (violation,) = _check("layer_error", m, min_sqnr_db=20)
    assert "the reference kept no layer data" in violation.reason and math.isnan(violation.measured)


def test_a_failed_quality_gate_names_the_worst_layers(pair):
    broken = dataclasses.replace(pair, layers=_layers(**{"layers.0": 40.0, "layers.3": 12.5, "lm_head": math.inf}))
    (violation,) = _check("kl_divergence", broken, max_mean=0.001)
    assert violation.reason.endswith("; worst layers: layers.3 12.5 dB own SQNR (cumulative 11.5 dB), layers.0 40.0 dB "
                                     "own SQNR (cumulative 39.0 dB)")
    assert _check("kl_divergence", broken, max_mean=1.0) == []

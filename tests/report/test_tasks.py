"""report.tasks and the task/layer properties: the first flipped items side by side, per recipe."""

from __future__ import annotations

import math

from pytest_quant.measure.layers import LayerError, LayerErrors
from pytest_quant.measure.paired import PairedAccuracy
from pytest_quant.measure.tasks import FlippedItem, TaskMeasurement
from pytest_quant.metrics import Measurements
from pytest_quant.report.properties import FLIPS, LAYER_SQNR, PREFIX, properties
from pytest_quant.report.rows import Rows
from pytest_quant.report.tasks import markdown_flips


def _measured() -> Measurements:
    paired = PairedAccuracy(400, 250, 254, 6, 2)
    flips = (FlippedItem("cloze:eval.txt:9", "a | passage", "room", "room", "sea", lost=True),
             FlippedItem("cloze:eval.txt:12", "another", "Bath", "spoke", "Bath", lost=False))
    tasks = TaskMeasurement("cloze", 400, 400, paired, paired, {"acc": flips, "acc_norm": ()}, 1.0)
    layers = LayerErrors((LayerError("layers.0", 30.0, 0.999, 30.0, 0.999), LayerError("lm_head", math.inf, 1.0, 25.0, 0.99)),
                         128)
    reference = Measurements("tiny", "reference", "cpu", is_reference=True)
    return Measurements("tiny", "bnb-nf4", "cpu", tasks=tasks, layers=layers, reference=reference)


def test_properties_carry_the_flips_and_each_layers_sqnr():
    props = dict(properties(_measured()))
    assert props[PREFIX + FLIPS][0] == {"source": "cloze:eval.txt:9", "question": "a | passage", "expected": "room",
                                        "reference": "room", "model": "sea", "lost": True}
    assert props[PREFIX + LAYER_SQNR] == {"layers.0": [30.0, 30.0], "lm_head": [None, 25.0]}  # inf: unchanged
    assert props[PREFIX + "task_acc_difference_points"] == -1.0 and props[PREFIX + "task_acc_lost_items"] == 6
    assert props[PREFIX + "min_layer_sqnr_db"] == 30.0 and PREFIX + "lm_head_sqnr_db" not in props


def test_the_markdown_report_lists_the_first_flipped_items_beside_the_reference():
    rows = Rows()
    rows.pairs["tiny-bnb-nf4"] = {k.removeprefix(PREFIX): v for k, v in properties(_measured())}
    lines = markdown_flips(rows)
    assert lines[0] == "### tiny bnb-nf4: the first task items answered differently from the reference"
    assert "| cloze:eval.txt:9 | a \\| passage | room | room | sea (lost) |" in lines
    assert "| cloze:eval.txt:12 | another | Bath | spoke | Bath (gained) |" in lines

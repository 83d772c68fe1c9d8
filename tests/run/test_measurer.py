"""run.measurer: the decode mode of a pair (the session's, lowered by a recipe's pin, eager when spread)."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_quant.recipes import BUILTIN_RECIPES
from pytest_quant.run.measurer import MeasureSettings, decode_mode_of

SETTINGS = MeasureSettings(decode_batch=1, sharded=False, reference_top_k=256, decode_mode="compiled")


@pytest.mark.parametrize("session, pinned, expected", [
    ("compiled", None, "compiled"), ("compiled", "cuda-graph", "cuda-graph"), ("compiled", "eager", "eager"),
    ("cuda-graph", "compiled", "cuda-graph"), ("eager", "cuda-graph", "eager"),
])
def test_a_recipe_pin_lowers_the_sessions_mode_never_raises_it(session, pinned, expected) -> None:
    recipe = dataclasses.replace(BUILTIN_RECIPES["bnb-nf4"], decode_mode=pinned)
    assert decode_mode_of(recipe, dataclasses.replace(SETTINGS, decode_mode=session)) == expected


def test_a_model_spread_over_gpus_decodes_eagerly() -> None:
    assert decode_mode_of(BUILTIN_RECIPES["reference"], dataclasses.replace(SETTINGS, sharded=True)) == "eager"


def test_a_prompt_and_its_generated_tokens_must_fit_the_context() -> None:
    from pytest_quant.models import TINY_DIR, context_length
    from pytest_quant.prompts import Prompt
    from pytest_quant.run.measurer import check_context

    context = context_length(TINY_DIR)
    prompt = Prompt(text="x", source="p.txt:3")
    check_context(TINY_DIR, [prompt], [[1] * (context - 8)], 8)  # fits exactly
    with pytest.raises(pytest.fail.Exception, match=r"prompt 'p.txt:3' is 1017 tokens; with the 8 generated"):
        check_context(TINY_DIR, [prompt], [[1] * (context - 7)], 8)


@pytest.mark.parametrize("every_mode, expected", [(True, ["compiled", "cuda-graph", "eager"]), (False, ["compiled"])])
def test_the_reference_is_timed_in_the_lower_modes_only_when_a_ratio_will_need_them(monkeypatch, every_mode,
                                                                                   expected) -> None:
    from pytest_quant.measure import roofline
    from pytest_quant.measure.throughput import ThroughputMeasurement
    from pytest_quant.models import TINY_DIR, ModelSource
    from pytest_quant.run.ledger import Ledger
    from pytest_quant.run.live import LiveModel
    from pytest_quant.run.measurer import Measurer
    from pytest_quant.run.pairs import Pairing

    monkeypatch.setattr(roofline, "memory_bandwidth_bytes_per_s", lambda device: None)  # no GPU to ask
    pairing = Pairing([ModelSource("tiny", TINY_DIR)], [BUILTIN_RECIPES["reference"]])
    (pair,) = pairing.pairs
    ledger = Ledger(pairing, lambda: "cuda:0")
    measurer = Measurer(ledger, inputs=None, settings=SETTINGS, progress=lambda line: None)
    timed = []

    def fake_time(live, batch, mode, fallback=True):
        timed.append(mode)
        return ThroughputMeasurement(1, 1.0, 1.0, 0, 0, 0, 128, 128, 5, 3, decode_mode=mode), 1.0

    monkeypatch.setattr(measurer, "_time", fake_time)
    model = type("Model", (), {"get_memory_footprint": lambda self: 1})()
    measurer._throughput(LiveModel(pair, model, None, None, 0, "cuda:0"), 1, every_mode)
    assert timed == expected
    known = ledger.own(pair)
    assert [known.throughput_at(None, m).decode_mode for m in expected] == expected

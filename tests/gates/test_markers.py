"""gates.markers: a marker's arguments validated into Limits (bad values are errors that name them), what each
needs measured, and the parsed markers of an item."""

from __future__ import annotations

import pytest

from pytest_quant import gates


@pytest.mark.parametrize(
    "marker, args, kwargs, message",
    [
        ("vram_budget", ("six gigs",), {}, "'six gigs' is not a size"),
        ("vram_budget", (), {"ratio": -0.5}, r"ratio=-0.5\): must be > 0"),
        ("tokens_per_second", (), {"mn": 10}, "unknown keyword.*mn; accepted: min, min_ratio"),
        ("tokens_per_second", (100,), {}, "positional arguments"),
        ("perplexity_delta", (), {}, "needs at least one limit"),
        ("perplexity_delta", (), {"max": "1"}, "expected a finite number"),
        ("kl_divergence", (), {"min_top1": 101}, "must be at most 100"),
        ("kl_divergence", (), {"max_mean": float("nan")}, "expected a finite number"),
    ],
)
def test_bad_marker_arguments(marker, args, kwargs, message) -> None:
    with pytest.raises(gates.MarkerError, match=message):
        gates.parse(gates.MARKERS[marker], args, kwargs)


def test_upper_limits_may_be_zero_floors_may_not() -> None:
    assert gates.parse(gates.MARKERS["perplexity_delta"], (), {"max": 0}).values == {"max": 0.0}
    with pytest.raises(gates.MarkerError, match="must be > 0"):
        gates.parse(gates.MARKERS["tokens_per_second"], (), {"min": 0})


def test_ratio_keywords_need_the_reference() -> None:
    assert gates.parse(gates.MARKERS["vram_budget"], ("1 GiB",), {}).reference_needs == frozenset()
    assert gates.parse(gates.MARKERS["vram_budget"], (), {"ratio": 0.5}).reference_needs == {"vram"}
    assert gates.parse(gates.MARKERS["tokens_per_second"], (), {"min_ratio": 0.5}).reference_needs == {"throughput"}


def test_a_marker_without_a_baseline_refuses_vs_baseline() -> None:
    with pytest.raises(gates.MarkerError, match="generation_agreement has no stored baseline"):
        gates.parse(gates.MARKERS["generation_agreement"], (), {"vs": "baseline"})


def test_an_unknown_keyword_lists_every_accepted_one_from_the_spec() -> None:
    with pytest.raises(gates.MarkerError) as info:
        gates.parse(gates.MARKERS["kl_divergence"], (), {"max_kl": 1})
    assert str(info.value).endswith("accepted: max_mean, max_p99, max_p999, max_rms_delta_p, min_top1, confidence, vs, "
                                    "tolerance")


@pytest.mark.parametrize("marker, kwargs, message", [
    ("kl_divergence", {"max_mean": 0.1, "confidence": 1.5}, r"confidence=1.5\): expected a one-sided confidence level"),
    ("kl_divergence", {"max_p99": 0.1, "confidence": 0.95}, "applies to max_mean, max_rms_delta_p, min_top1"),
    ("generation_agreement", {"min_prefix_tokens": 40}, "more than the 32 tokens compared"),
    ("generation_agreement", {"min_exact_percent": 50, "tokens": 0}, r"tokens=0\): expected a whole number >= 1"),
    ("tokens_per_second", {"min": 1, "confidence": 0.95}, "unknown keyword.*confidence"),
    ("tokens_per_second", {"min": 1, "batch": 0}, r"batch=0\): expected a whole number >= 1"),
    ("vram_budget", {"budget": "1 GiB", "phase": "load"}, r"phase='load'\): accepted: 'resident', 'generate'"),
    ("perplexity_delta", {"max": 1, "tolerance": 0.1}, "a tolerance needs vs='baseline'"),
    ("perplexity_delta", {"vs": "last"}, "the only comparison is vs='baseline'"),
])
def test_option_keywords_are_validated(marker, kwargs, message) -> None:
    with pytest.raises(gates.MarkerError, match=message):
        gates.parse(gates.MARKERS[marker], (), kwargs)


def test_what_options_add_to_the_needs() -> None:
    assert gates.parse(gates.MARKERS["tokens_per_second"], (), {"min": 1, "batch": 4}).needs == {"throughput:4"}
    assert gates.parse(gates.MARKERS["vram_budget"], ("1 GiB",), {"phase": "generate"}).needs == {"vram", "throughput"}
    assert gates.parse(gates.MARKERS["generation_agreement"], (), {"min_exact_percent": 1, "tokens": 8}).needs \
        == {"generation:8"}


def test_top1_as_a_fraction_is_noted() -> None:
    (note,) = gates.parse(gates.MARKERS["kl_divergence"], (), {"min_top1": 0.9}).notes
    assert "did you mean min_top1=90?" in note

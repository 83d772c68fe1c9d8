"""Option and marker argument parsing: bad values are errors that name them."""

from __future__ import annotations

import pytest

from pytest_quant import gates
from pytest_quant.units import format_bytes, parse_bytes


@pytest.mark.parametrize(
    "text, expected",
    [("6 GiB", 6 * 2**30), ("512MiB", 512 * 2**20), ("1.5 GB", 1_500_000_000), ("1024", 1024), (2048, 2048)],
)
def test_sizes(text, expected) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["six gigs", "6 GiBs", "-1 GiB", "0", True, ""])
def test_bad_sizes_name_the_value(text) -> None:
    with pytest.raises(ValueError, match="is not a size|must be positive|under one byte") as info:
        parse_bytes(text)
    assert repr(text) in str(info.value)


def test_format_bytes() -> None:
    assert format_bytes(6 * 2**30) == "6.00 GiB"
    assert format_bytes(1536 * 2**10) == "1.50 MiB"
    assert format_bytes(None) == "-"


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

"""units: byte sizes parsed (bad values named) and formatted."""

from __future__ import annotations

import pytest

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

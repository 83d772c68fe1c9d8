"""run.inputs: the warning for an eval text far shorter than asked names what was scored, and calls it noise
only when it is."""

from __future__ import annotations

from pathlib import Path

from pytest_quant.run.inputs import few_tokens_note


def test_no_note_when_at_least_half_is_scored() -> None:
    assert few_tokens_note(4096, 8192, Path("e.txt")) is None


def test_a_short_text_is_called_noise() -> None:
    note = few_tokens_note(900, 8192, Path("e.txt"))
    assert note.startswith("pytest-quant: only 900 tokens of e.txt scored, of the 8192 asked for")
    assert "mostly noise" in note


def test_a_whole_long_text_is_not_called_noise() -> None:
    note = few_tokens_note(114_000, 1_000_000, Path("e.txt"))
    assert "noise" not in note and "ask for at most 114000 tokens" in note

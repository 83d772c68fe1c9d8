"""verdict: a violated gate is raised in the call phase as a failing assert is, so xfail, xfail(strict=True) and
--runxfail read it the same way (exit code, terminal, JUnit)."""

from __future__ import annotations

import pytest

KNOWN_BAD = """
import pytest

@pytest.mark.xfail(reason="known to be over budget")
@pytest.mark.vram_budget("1 KiB")
def test_plain(quant_model):
    pass

@pytest.mark.xfail(strict=True, reason="known to be over budget")
@pytest.mark.vram_budget("1 KiB")
def test_strict(quant_model):
    pass
"""
ARGS = ("-p", "no:cacheprovider", "--quant-eval-tokens", "256", "--quant-recipes", "reference")


def test_a_violated_gate_under_xfail_is_an_expected_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(KNOWN_BAD)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(*ARGS, f"--junitxml={junit}", "-rx")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(xfailed=2)
    assert "QUANT GATE" not in result.stdout.str() and "XPASS" not in result.stdout.str()
    result.stdout.fnmatch_lines_random(["*XFAIL*test_plain*known to be over budget*", "tiny*reference*xfail*"])
    text = junit.read_text()
    assert 'failures="0"' in text and text.count("<skipped") == 2


def test_under_runxfail_a_violated_gate_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(KNOWN_BAD)
    result = pytester.runpytest(*ARGS, "--runxfail", "-v")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random(["*test_plain*QUANT GATE*", "*test_strict*QUANT GATE*", "*VRAM budget 1.00 KiB exceeded*"])

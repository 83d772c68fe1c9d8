"""The plugin's hooks as a user sees them: third-party backends through the hook, gates as their own report
phase, metrics kept when a test body fails, the reference fixture."""

from __future__ import annotations

import json

import pytest


TOY_CONFTEST = """
from pytest_quant.backends import Backend, Loaded


def load_toy(request):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(request.model_path, dtype=torch.float32)
    with torch.no_grad():  # a toy "quantization": weights rounded to bfloat16 and back
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(module.weight.to(torch.bfloat16).float())
    model.eval()
    return Loaded(model, AutoTokenizer.from_pretrained(request.model_path), "float32", kernel="ToyLinear",
                  notes={"note": request.recipe.get("note")})


def pytest_quant_backends(config):
    return [Backend("toy", load_toy, requires=("torch",), install_hint="pip install torch",
                    fields=frozenset({"note"}))]
"""

TOY_PYPROJECT = """
[tool.pytest-quant.recipes.toy-bf16]
backend = "toy"
note = "rounded"
"""


def test_a_conftest_registers_a_backend_through_the_hook(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(TOY_CONFTEST)
    pytester.makepyprojecttoml(TOY_PYPROJECT)
    pytester.makepyfile("""
import pytest

@pytest.mark.perplexity_delta(max_rel=0.01)
@pytest.mark.kl_divergence(max_mean=0.01, min_top1=95)
def test_toy(quant_model):
    assert quant_model.recipe.backend == "toy"
""")
    result = pytester.runpytest("--quant-recipes", "toy-bf16", "--quant-eval-tokens", "512", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*tiny*toy-bf16*cpu*ToyLinear*pass*"])


def test_an_unknown_field_of_a_registered_backend_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(TOY_CONFTEST)
    pytester.makepyprojecttoml(TOY_PYPROJECT + 'colour = "red"\n')
    pytester.makepyfile("def test_x(quant_model): pass")
    result = pytester.runpytest("--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*toy-bf16*unknown field(s) 'colour' for backend 'toy'*known fields: note*"])


def test_a_violated_gate_has_its_own_status_and_section_and_a_failing_body_keeps_its_metrics(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
import pytest

@pytest.mark.vram_budget("1 KiB")
def test_over_budget(quant_model):
    pass

@pytest.mark.vram_budget("1 GiB")
def test_body_fails(quant_model):
    raise AssertionError("the test's own assertion")
""")
    report = pytester.path / "r.json"
    result = pytester.runpytest("--quant-recipes", "reference", "--quant-eval-tokens", "512", "-p", "no:cacheprovider",
                                "-v", f"--junitxml={pytester.path / 'junit.xml'}", "--quant-report", str(report))
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*test_over_budget*QUANT GATE*",
        "*test_body_fails*FAILED*",
        "*pytest-quant gate violations*",
        "*test_over_budget*",
        "*VRAM budget 1.00 KiB exceeded: footprint*[tiny, reference, cpu]*",
    ])
    junit = (pytester.path / "junit.xml").read_text()
    assert junit.count('name="quant.vram_resident_bytes"') == 2  # both tests recorded the figure
    row = json.loads(report.read_text())["results"][0]
    assert row["recipe"] == "reference" and row["result"] == "fail"


def test_quant_reference_of_a_prequantized_checkpoint_is_a_clear_error(pytester: pytest.Pytester, tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    from pytest_quant.backends import LoadRequest, load
    from pytest_quant.models import TINY_DIR
    from pytest_quant.recipes import BUILTIN_RECIPES

    loaded = load(LoadRequest(TINY_DIR, BUILTIN_RECIPES["bnb-nf4"], "cpu"))
    loaded.model.save_pretrained(tmp_path / "nf4")
    loaded.tokenizer.save_pretrained(tmp_path / "nf4")
    pytester.makepyfile("def test_ref(quant_reference):\n    pass\n")
    result = pytester.runpytest(f"--quant-model={tmp_path / 'nf4'}", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*quant_reference: nf4 is a pre-quantized checkpoint and has no unquantized reference*"])


def test_bad_marker_argument_is_an_error_naming_it(run_quant) -> None:
    result = run_quant(
        """
import pytest

@pytest.mark.vram_budget("six gigs")
def test_vram(quant_model): pass

@pytest.mark.tokens_per_second(mn=3)
def test_tps(quant_model): pass

@pytest.mark.perplexity_delta(max=-1)
def test_ppl(quant_model): pass

@pytest.mark.perplexity_delta(max=1)
def test_no_fixture(): pass
""",
        "--quant-recipes",
        "bnb-nf4",
    )
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "*'six gigs' is not a size; write a number and a unit such as '6 GiB'*",
            "*tokens_per_second: unknown keyword(s) mn; accepted: min, min_ratio*",
            "*perplexity_delta(max=-1): must be >= 0*",
            "*add the quant_model fixture to test_no_fixture*",
        ]
    )


RELIABILITY_FAST = ("-p", "no:cacheprovider", "--quant-eval-tokens", "512", "--quant-recipes", "reference")


def errors_section(out: str) -> str:
    """The ERRORS section alone: the short summary repeats each message in full where the terminal is wide (CI)."""
    return out.partition("= ERRORS =")[2].partition("short test summary info")[0]


@pytest.mark.parametrize("selection", [(), ("-k", "test_raises")], ids=["beside-a-pass", "alone"])
def test_a_raising_body_fails_its_row_and_keeps_its_metrics(pytester: pytest.Pytester, selection) -> None:
    pytester.makepyfile("""
import pytest

@pytest.mark.perplexity_delta(max_rel=0.5)
def test_raises(quant_model):
    raise RuntimeError("the body broke")

@pytest.mark.perplexity_delta(max_rel=0.5)
def test_passes(quant_model):
    pass
""")
    result = pytester.runpytest(*RELIABILITY_FAST, "--quant-report", "r.json", *selection)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*pytest-quant summary*", "tiny*reference*FAIL"])
    (row,) = json.loads((pytester.path / "r.json").read_text())["results"]
    assert row["result"] == "fail" and row["perplexity"] > 1 and row["eval_tokens"] == 512



# -- weak: markers ------------------------------------------------------------------------------------------


def test_marker_errors_are_printed_once_and_sizes_under_a_byte_suggest_ratio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
import pytest

@pytest.mark.vram_budget(0.5)
def test_budget(quant_model):
    pass

@pytest.mark.kl_divergence(max_mean="x")
def test_kl(quant_model):
    pass
""")
    result = pytester.runpytest(*RELIABILITY_FAST)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "During handling" not in out
    errors = errors_section(out)
    assert errors.count("for a fraction of the reference's memory write vram_budget(ratio=0.5)") == 1
    assert errors.count("@pytest.mark.kl_divergence(max_mean='x'): expected a finite number") == 1
    assert "pytest-quant: loading" not in out


def test_top1_as_a_fraction_warns_that_it_is_in_percent(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
import pytest

@pytest.mark.kl_divergence(min_top1=0.9)
def test_q(quant_model):
    pass
""")
    result = pytester.runpytest(*RELIABILITY_FAST)
    result.stdout.fnmatch_lines(["*top-1 agreement is in percent (0-100); did you mean min_top1=90?"])



# -- weak: an interrupted session ---------------------------------------------------------------------------


def test_interrupted_session_marks_its_rows_interrupted(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
import pytest

@pytest.mark.perplexity_delta(max_rel=0.5)
def test_a(quant_model):
    pass

def test_b(quant_model):
    raise KeyboardInterrupt
""")
    result = pytester.runpytest(*RELIABILITY_FAST, "--quant-report", "r.json", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*pytest-quant summary (interrupted)*", "tiny*reference*interrupted"])
    (row,) = json.loads((pytester.path / "r.json").read_text())["results"]
    assert row["result"] == "interrupted"


def test_writing_a_report_adds_no_measurement(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
import pytest

@pytest.mark.vram_budget("1 GiB")
def test_memory(quant_model):
    pass
""")
    result = pytester.runpytest(*RELIABILITY_FAST, "--quant-report", "r.json", "-s")
    assert result.ret == pytest.ExitCode.OK
    assert "timing prefill" not in result.stdout.str()  # no decode was timed for the report
    (row,) = json.loads((pytester.path / "r.json").read_text())["results"]
    assert "vram_resident_bytes" in row and "decode_tokens_per_s" not in row

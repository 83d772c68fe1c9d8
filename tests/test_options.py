"""Every --quant-* option and its ini twin, through pytester."""

from __future__ import annotations

import shutil

import pytest

from pytest_quant import backends
from pytest_quant.models import TINY_DIR

FAST = ("--quant-eval-tokens", "1024")  # small and fast: enough tokens to tell recipes apart

USES_MODEL = """
def test_uses(quant_model):
    pass
"""


def collected_ids(result: pytest.RunResult) -> list[str]:
    return [line.split("[", 1)[1].rstrip("]") for line in result.outlines if "::test_" in line and "[" in line]


def test_quant_gpu_without_cuda_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USES_MODEL)
    result = pytester.runpytest("--quant-gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quant-gpu: no usable CUDA device: torch * reports torch.cuda.is_available() = False*"])


def test_quant_gpu_ini_twin_reads_the_same(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USES_MODEL)
    pytester.makeini("[pytest]\nquant_gpu = true\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quant-gpu: no usable CUDA device*"])


def test_cuda_device_needs_quant_gpu(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--quant-device", "cuda:1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quant-device cuda:1: a CUDA device needs --quant-gpu*"])


def test_bad_device_names_the_value(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--quant-device", "gpu0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quant-device 'gpu0': expected 'cpu', 'cuda', 'cuda:N' or 'auto'*"])


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "inf"])
def test_a_bad_timing_budget_names_the_value(pytester: pytest.Pytester, value: str) -> None:
    result = pytester.runpytest(f"--quant-timing-budget={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--quant-timing-budget '{value}': expected a number of seconds > 0*"])


def test_the_timing_budget_ini_twin_reaches_the_session(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
import pytest
from pytest_quant.plugin import SESSION_KEY

def pytest_collection_finish(session):
    print("budget", session.config.stash[SESSION_KEY].measurer._settings.timing_budget_s)
""")
    pytester.makeini("[pytest]\nquant_timing_budget = 90.5\n")
    assert "budget 90.5" in pytester.runpytest("-s", "--collect-only", "-q").stdout.str()
    assert "budget 600.0" in pytester.runpytest("-s", "--collect-only", "-q", "-c", "/dev/null").stdout.str()


def test_default_recipes_are_every_installed_builtin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USES_MODEL)
    result = pytester.runpytest("--collect-only", "-q")
    ids = collected_ids(result)
    assert ids[0] == "tiny-reference"
    assert {"tiny-bnb-nf4", "tiny-bnb-fp4", "tiny-bnb-nf4-dq", "tiny-bnb-int8"} <= set(ids)


def test_recipes_option_and_ini_twin_command_line_wins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USES_MODEL)
    pytester.makeini("[pytest]\nquant_recipes = bnb-int8,reference\n")
    assert collected_ids(pytester.runpytest("--collect-only", "-q")) == ["tiny-bnb-int8", "tiny-reference"]
    ids = collected_ids(pytester.runpytest("--collect-only", "-q", "--quant-recipes", "bnb-fp4"))
    assert ids == ["tiny-bnb-fp4"]


def test_unknown_recipe_lists_the_known_ones(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USES_MODEL)
    result = pytester.runpytest("--quant-recipes", "bnb-nf5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown recipe(s) 'bnb-nf5'; known recipes: reference, bnb-nf4, bnb-fp4*"])


def test_user_recipe_from_pyproject(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USES_MODEL)
    pytester.makepyprojecttoml(
        """
[tool.pytest-quant.recipes.int8-t4]
backend = "bitsandbytes"
load_in_8bit = true
llm_int8_threshold = 4.0
llm_int8_skip_modules = ["lm_head"]
"""
    )
    result = pytester.runpytest("--collect-only", "-q", "--quant-recipes", "int8-t4,reference")
    assert collected_ids(result) == ["tiny-int8-t4", "tiny-reference"]


@pytest.mark.parametrize(
    "table, message",
    [
        ('backend = "bitsandbytes"\nload_in_4bit = true\nbnb_4bit_quant = "nf4"',
         "*unknown field(s) 'bnb_4bit_quant' for backend 'bitsandbytes'; known fields: bnb_4bit_compute_dtype*"),
        ('backend = "onnx"', "*backend 'onnx' is not one of [[]*'bitsandbytes'*'gptqmodel'*'reference'*[]]*"),
        ('backend = "bitsandbytes"', "*set exactly one of load_in_4bit = true or load_in_8bit = true*"),
    ],
)
def test_bad_user_recipe_is_a_usage_error(pytester: pytest.Pytester, table: str, message: str) -> None:
    pytester.makepyfile(USES_MODEL)
    pytester.makepyprojecttoml(f"[tool.pytest-quant.recipes.mine]\n{table}\n")
    result = pytester.runpytest("--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_model_folder_and_ini_twin(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "My Tiny"
    shutil.copytree(TINY_DIR, folder)
    pytester.makepyfile(USES_MODEL)
    ids = collected_ids(pytester.runpytest("--collect-only", "-q", "--quant-model", str(folder),
                                           "--quant-model", "tiny", "--quant-recipes", "reference"))
    assert ids == ["my-tiny-reference", "tiny-reference"]
    pytester.makeini(f"[pytest]\nquant_model =\n    {folder}\nquant_recipes = bnb-nf4\n")
    assert collected_ids(pytester.runpytest("--collect-only", "-q")) == ["my-tiny-bnb-nf4"]


@pytest.mark.parametrize("value, message", [("./nowhere", "no such folder"), (".", "has no config.json")])
def test_bad_model_names_the_value(pytester: pytest.Pytester, value: str, message: str) -> None:
    result = pytester.runpytest("--quant-model", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--quant-model {value!r}: *{message}*"])


@pytest.mark.parametrize("value", ["1", "many"])
def test_bad_eval_tokens_names_the_value(pytester: pytest.Pytester, value: str) -> None:
    result = pytester.runpytest("--quant-eval-tokens", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--quant-eval-tokens {value!r}: expected a whole number >= 2*"])


def test_bad_ini_value_names_it(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nquant_eval_tokens = lots\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini quant_eval_tokens = 'lots': --quant-eval-tokens 'lots'*"])


def test_quant_gpu_marker_skips_without_the_flag(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.quant_gpu
def test_gpu_only(quant_model):
    raise AssertionError("must not run")
"""
    )
    result = pytester.runpytest("--quant-recipes", "bnb-nf4", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs --quant-gpu*"])


def test_missing_backend_skips_with_hint_or_fails_when_strict(pytester: pytest.Pytester, monkeypatch) -> None:
    real = backends.is_installed
    monkeypatch.setattr(backends, "is_installed", lambda name: name != "bitsandbytes" and real(name))
    pytester.makepyfile(USES_MODEL)
    assert all("bnb" not in i for i in collected_ids(pytester.runpytest("--collect-only", "-q")))
    result = pytester.runpytest("--quant-recipes", "bnb-nf4", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*recipe bnb-nf4: bitsandbytes not installed; install it with: pip install 'pytest-quant[[]bnb[]]'*"])
    strict = pytester.runpytest("--quant-recipes", "bnb-nf4", "--quant-strict")
    strict.assert_outcomes(errors=1)
    strict.stdout.fnmatch_lines(["*bitsandbytes not installed*(--quant-strict)*"])


def test_k_selects_by_recipe_id(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USES_MODEL)
    assert collected_ids(pytester.runpytest("--collect-only", "-q", "-k", "nf4 and not dq and not kv")) == ["tiny-bnb-nf4"]


def test_eval_text_and_tokens(pytester: pytest.Pytester) -> None:
    text = pytester.path / "eval.txt"
    text.write_text("It was the best of times, it was the worst of times, it was the age of wisdom. " * 20)
    pytester.makepyfile(
        """
def test_quality(quant_model):
    q = quant_model.quality
    assert q.tokens_scored == 100
    assert q.perplexity > 1
"""
    )
    result = pytester.runpytest("--quant-recipes", "reference", "--quant-eval-text", str(text),
                                "--quant-eval-tokens", "100")
    result.assert_outcomes(passed=1)
    missing = pytester.runpytest("--quant-eval-text", "nope.txt")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["*--quant-eval-text 'nope.txt': no such file*"])


def test_fixtures_expose_model_recipe_device_and_reference(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
def test_surface(quant_model, quant_recipe, quant_reference):
    assert quant_model.recipe is quant_recipe and quant_recipe.name == "bnb-nf4"
    assert quant_model.device == "cpu" and quant_model.measurements.model == "tiny"
    assert type(quant_model.model).__name__ == "LlamaForCausalLM"
    assert quant_model.tokenizer("Anne")["input_ids"]
    assert quant_reference.recipe == "reference" and quant_reference.quality.perplexity > 1
    assert quant_model.vram.resident_bytes < quant_reference.vram.resident_bytes
"""
    )
    result = pytester.runpytest(*FAST, "--quant-recipes", "bnb-nf4")
    result.assert_outcomes(passed=1)


@pytest.mark.skipif(not __import__("importlib").util.find_spec("xdist"), reason="needs pytest-xdist")
def test_xdist_summary_gathers_workers_metrics(xdist_session) -> None:
    # the shared two-worker session of tests/conftest.py (reference, bnb-nf4, bnb-int8)
    result = xdist_session.first
    result.assert_outcomes(passed=xdist_session.passed)
    result.stdout.fnmatch_lines(["*pytest-quant summary*"])
    result.stdout.fnmatch_lines_random(["*tiny*bnb-nf4*cpu*pass*", "*tiny*bnb-int8*cpu*pass*"])


@pytest.mark.parametrize("content, name, where", [
    ("first prompt\n", "p.txt", None),
    ('{"prompt": "fine"}\n{"promt": "typo"}\n', "p.jsonl", "p.jsonl:2"),
])
def test_quant_prompts_is_checked_at_start_up(pytester: pytest.Pytester, content, name, where) -> None:
    (pytester.path / name).write_text(content)
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--quant-prompts", name, "-p", "no:cacheprovider")
    if where is None:
        result.assert_outcomes(passed=1)
        return
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--quant-prompts 'p.jsonl': prompts file {where}: has neither of*"])
    pytester.makeini(f"[pytest]\nquant_prompts = {name}\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*ini quant_prompts = 'p.jsonl'*{where}*"])

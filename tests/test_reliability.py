"""Issue 14: bad inputs a new user would try, each a clear error before any model loads (exit 4 naming the
value and what is accepted), and faults that must not lose or mislabel metrics."""

from __future__ import annotations

import json
import os
import shutil
from fnmatch import fnmatch
from pathlib import Path

import pytest

from pytest_quant.atomic import atomic_write
from pytest_quant.baselines.compare import compare
from pytest_quant.baselines.record import dumps
from pytest_quant.models import TINY_DIR

FAST = ("-p", "no:cacheprovider", "--quant-eval-tokens", "512", "--quant-recipes", "reference")


def errors_section(out: str) -> str:
    """The ERRORS section alone: the short summary repeats each message in full where the terminal is wide (CI)."""
    return out.partition("= ERRORS =")[2].partition("short test summary info")[0]


GATED = """
import pytest

@pytest.mark.perplexity_delta(max_rel=0.5)
def test_q(quant_model):
    pass
"""
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def model_folder(where: Path, weights: bool = True) -> Path:
    """A copy of the embedded model (its weights linked, not copied)."""
    where.mkdir(parents=True)
    for name in MODEL_FILES:
        if name == "model.safetensors":
            if weights:
                (where / name).symlink_to(TINY_DIR / name)
        else:
            shutil.copy(TINY_DIR / name, where / name)
    return where


def usage_error(result: pytest.RunResult, *lines: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(list(lines))
    assert "pytest-quant: loading" not in result.stdout.str()  # before any model loads


# -- bad: wrong result, internal error, settings lost -------------------------------------------------------


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
    result = pytester.runpytest(*FAST, "--quant-report", "r.json", *selection)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*pytest-quant summary*", "tiny*reference*FAIL"])
    (row,) = json.loads((pytester.path / "r.json").read_text())["results"]
    assert row["result"] == "fail" and row["perplexity"] > 1 and row["eval_tokens"] == 512


def test_corrupt_model_config_is_a_usage_error_naming_file_and_json_error(pytester: pytest.Pytester) -> None:
    folder = model_folder(pytester.path / "m")
    (folder / "config.json").write_text('{"model_type": "llama", ')
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest(*FAST, f"--quant-model={folder}"),
                f"*--quant-model*{folder / 'config.json'}: not valid JSON (Expecting property name*line 1 column 25*")


def test_recipes_not_a_table_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.pytest-quant]\nrecipes = 3\n")
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest(*FAST),
                "*[[]tool.pytest-quant[]]: 'recipes' is 3; expected a table of recipe tables*")


def test_path_option_in_space_form_outside_the_project_shows_the_equals_form(
        pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = model_folder(tmp_path_factory.mktemp("outside") / "m")
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\nquant_recipes = "mine"\n\n'
                               '[tool.pytest-quant.recipes.mine]\nbackend = "reference"\n')
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest("-p", "no:cacheprovider", "--quant-model", str(outside)),
                f"*--quant-model {outside}: pytest took {outside} for a test path*instead of rootdir {pytester.path} "
                f"and ini file {pytester.path / 'pyproject.toml'}; write it as --quant-model={outside}")
    result = pytester.runpytest("-p", "no:cacheprovider", f"--quant-model={outside}", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*test_q[[]m-mine[]]"])


def test_path_option_in_space_form_inside_the_project_is_fine(pytester: pytest.Pytester) -> None:
    folder = model_folder(pytester.path / "models" / "m")
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\nquant_recipes = "reference"\n')
    pytester.makepyfile(GATED)
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-model", str(folder), "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*test_q[[]m-reference[]]"])


# -- weak: recipes, checked at start-up ---------------------------------------------------------------------


@pytest.mark.parametrize("backend, fields, message", [
    ("bitsandbytes", 'load_in_4bit = "yes"', "field 'load_in_4bit' is 'yes'; accepted: true or false"),
    ("bitsandbytes", 'load_in_4bit = true\nbnb_4bit_compute_dtype = "float17"',
     "field 'bnb_4bit_compute_dtype' is 'float17'; accepted: float32, float16, bfloat16"),
    ("bitsandbytes", "load_in_4bit = true\nload_in_8bit = true",
     "set exactly one of load_in_4bit = true or load_in_8bit = true (both are set)"),
    ("bitsandbytes", 'load_in_4bit = true\nbnb_4bit_quant_type = "nf5"',
     "field 'bnb_4bit_quant_type' is 'nf5'; accepted: nf4, fp4"),
    ("gptqmodel", "bits = 3.5", "field 'bits' is 3.5; accepted: 2, 3, 4 or 8"),
    ("gptqmodel", 'kernel = "nosuch"', "field 'kernel' is 'nosuch'; accepted: auto, gptq_*"),
    ("gptqmodel", 'calibration = "calib/missing.txt"',
     "field 'calibration' is 'calib/missing.txt': no such file in * (a relative path is read from the folder "
     "pytest runs in)*"),
], ids=["4bit-yes", "dtype-float17", "4bit-and-8bit", "nf5", "bits-3.5", "kernel-nosuch", "calibration-missing"])
def test_bad_recipe_field_is_a_usage_error_naming_file_recipe_field_and_accepted(
        pytester: pytest.Pytester, backend: str, fields: str, message: str) -> None:
    if backend == "gptqmodel" and "kernel" in fields:
        pytest.importorskip("gptqmodel")
    pyproject = pytester.makepyprojecttoml(f'[tool.pytest-quant.recipes.mine]\nbackend = "{backend}"\n{fields}\n')
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest("-p", "no:cacheprovider", "--quant-recipes", "mine"),
                f"*{pyproject} [[]tool.pytest-quant.recipes.mine[]]: {message}*")


def test_unknown_tool_key_warns(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml('[tool.pytest-quant.recipies.mine]\nbackend = "bitsandbytes"\n')
    pytester.makepyfile(GATED)
    result = pytester.runpytest(*FAST, "--collect-only")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*PytestConfigWarning:*[[]tool.pytest-quant[]]: unknown key 'recipies' ignored; "
                                 "known keys: recipes*"])


# -- weak: files and folders, checked at start-up -----------------------------------------------------------


def test_model_folder_without_weights_is_a_usage_error(pytester: pytest.Pytester) -> None:
    folder = model_folder(pytester.path / "m", weights=False)
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest(*FAST, f"--quant-model={folder}"),
                f"*--quant-model*{folder} has a config.json but no weight files (*.safetensors, *.bin*")


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty*"),
    (b" \n\n\t", "the file is empty*"),
    (b"caf\xe9 \x00\x01\x02 au lait", "not UTF-8 text (byte 0xe9 at offset 3: invalid continuation byte)*"),
], ids=["empty", "blank", "binary"])
def test_unusable_eval_text_is_a_usage_error_naming_it(pytester: pytest.Pytester, content: bytes, message: str) -> None:
    (pytester.path / "eval.txt").write_bytes(content)
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest(*FAST, "--quant-eval-text", "eval.txt"), f"*--quant-eval-text eval.txt: {message}")


def test_eval_text_of_one_token_fails_naming_the_file_and_count(pytester: pytest.Pytester) -> None:
    (pytester.path / "eval.txt").write_text("the")
    pytester.makepyfile(GATED)
    result = pytester.runpytest(*FAST, "--quant-eval-text", "eval.txt")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*--quant-eval-text: eval.txt has 1 tokens; at least 2 are needed"])
    out = result.stdout.str()
    assert "Traceback" not in out and "quality.py" not in out and "During handling" not in out
    assert errors_section(out).count("has 1 tokens") == 1  # once, not once per cause in a chain


@pytest.mark.parametrize("strict", [False, True], ids=["warns", "strict-fails"])
def test_eval_text_far_shorter_than_asked_warns_with_the_scored_count(pytester: pytest.Pytester, strict: bool) -> None:
    (pytester.path / "eval.txt").write_text("the cat")
    pytester.makepyfile("""
import pytest

@pytest.mark.vram_budget("1 KiB")
def test_q(quant_model):
    assert quant_model.quality.tokens_scored == 3
""")
    result = pytester.runpytest(*FAST, "--quant-eval-text", "eval.txt", *(["--quant-strict"] if strict else []))
    scored = "*only 3 tokens of eval.txt scored, of the 512 asked for (--quant-eval-tokens)*"
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    if strict:
        result.stdout.fnmatch_lines([scored + "(--quant-strict)"])
    else:  # the violated gate's message says how few tokens its figures rest on
        result.stdout.fnmatch_lines(["*pytest-quant gate violations*", "*VRAM budget 1.00 KiB exceeded*",
                                     "    " + scored.removeprefix("*")])
        result.stdout.fnmatch_lines(["*PytestWarning: pytest-quant: " + scored])


def test_cache_dir_that_is_a_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "cache").write_text("")
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest(*FAST, "--quant-cache-dir", "cache"),
                "*--quant-cache-dir cache: is a file; give a folder")
    usage_error(pytester.runpytest(*FAST, "--quant-cache-dir", "cache/sub"),
                "*--quant-cache-dir cache/sub: cannot be created: cache is a file; give a folder")


def test_report_into_an_unwritable_place_fails_at_start_up(pytester: pytest.Pytester) -> None:
    (pytester.path / "afile").write_text("")
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest(*FAST, "--quant-report", "afile/r.json"),
                f"*--quant-report {pytester.path / 'afile' / 'r.json'}: cannot create its folder: "
                f"{pytester.path / 'afile'} is a file; give a path in a writable folder")
    if Path("/proc/self").is_dir():  # Linux: nobody, root included, creates files in /proc
        usage_error(pytester.runpytest(*FAST, "--quant-report", "/proc/r.json"),
                    "*--quant-report /proc/r.json: cannot write there (*); give a path in a writable folder")
    (pytester.path / "r.json").mkdir()
    usage_error(pytester.runpytest(*FAST, "--quant-report", "r.json"), "*--quant-report *r.json: is a folder*")


def test_report_folder_is_created_at_start_up(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(GATED)
    result = pytester.runpytest(*FAST, "--quant-report", "out/deep/r.md", "--collect-only")
    assert result.ret == pytest.ExitCode.OK
    assert (pytester.path / "out" / "deep").is_dir()
    assert not [p for p in (pytester.path / "out" / "deep").iterdir() if p.name.startswith(".")]  # no scratch left


def test_bad_boolean_ini_names_the_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nquant_gpu = maybe\n")
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest(*FAST), "*ini quant_gpu: *'maybe'*; accepted: true or false")


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
    result = pytester.runpytest(*FAST)
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
    result = pytester.runpytest(*FAST)
    result.stdout.fnmatch_lines(["*top-1 agreement is in percent (0-100); did you mean min_top1=90?"])


# -- weak: baselines ----------------------------------------------------------------------------------------


def _record(model_sha: str, recipe: dict) -> dict:
    return {"format_version": 1, "metrics": {"vram_resident_bytes": 1000},
            "context": {"model": "m", "recipe": "mine", "device": "cpu", "model_sha256": model_sha,
                        "recipe_settings": recipe}}


@pytest.mark.parametrize("stored, message", [
    (_record("b" * 64, {"backend": "bitsandbytes", "load_in_4bit": True}),
     "recorded with model weights (sha256 of config.json and weight files) bbbbbbbbbbbb..., this run with "
     "aaaaaaaaaaaa...: it is the baseline of another model or recipe under the same name*"),
    (_record("a" * 64, {"backend": "bitsandbytes", "load_in_8bit": True}),
     'recorded with recipe settings {"backend": "bitsandbytes", "load_in_8bit": true}, this run with '
     '{"backend": "bitsandbytes", "load_in_4bit": true}*'),
], ids=["other-weights", "other-recipe"])
def test_baseline_of_another_model_or_recipe_is_not_compared(stored: dict, message: str) -> None:
    received = _record("a" * 64, {"backend": "bitsandbytes", "load_in_4bit": True})
    outcome = compare(received, dumps(stored), {"vram_resident_bytes": 0.05})
    (problem,) = outcome.problems
    assert fnmatch(problem, message), problem
    assert not outcome.matches(update=False)


def test_baseline_without_fingerprint_compares_and_is_rewritten_on_update() -> None:
    received = _record("a" * 64, {"backend": "reference"})
    old = _record("a" * 64, {"backend": "reference"})
    del old["context"]["model_sha256"], old["context"]["recipe_settings"]
    outcome = compare(received, dumps(old), {"vram_resident_bytes": 0.05})
    assert outcome.problems == [] and outcome.matches(update=False) and not outcome.matches(update=True)


def test_baseline_records_the_fingerprint_and_refuses_other_weights(pytester: pytest.Pytester) -> None:
    folder = model_folder(pytester.path / "m")
    pytester.makepyfile("""
import pytest

@pytest.mark.vram_budget(vs="baseline")
def test_q(quant_model):
    pass
""")
    args = ("-p", "no:cacheprovider", "--quant-recipes", "reference", f"--quant-model={folder}")
    assert pytester.runpytest(*args, "--snapshot-update").ret == pytest.ExitCode.OK
    (written,) = (pytester.path / "baselines" / "m").rglob("*.json")
    context = json.loads(written.read_text())["context"]
    assert len(context["model_sha256"]) == 64 and context["recipe_settings"] == {"backend": "reference"}
    assert written.stat().st_mode & 0o777 == 0o666 & ~_umask()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "initializer_range": 0.5}))  # other weights, same name
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*recorded with model weights (sha256 of config.json and weight files) *, this run "
                                 "with *: it is the baseline of another model or recipe under the same name*"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_respects_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


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
    result = pytester.runpytest(*FAST, "--quant-report", "r.json", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*pytest-quant summary (interrupted)*", "tiny*reference*interrupted"])
    (row,) = json.loads((pytester.path / "r.json").read_text())["results"]
    assert row["result"] == "interrupted"

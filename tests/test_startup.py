"""Start-up checks (issue 20, Weak list and item 4): each bad input is a usage error (exit 4) naming the file
or value and what is accepted, before any model loads. Pure checks are unit-tested on constructed folders;
one pytester run per behaviour a user sees."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from pytest_quant import prompts as prompts_module, startup
from pytest_quant.atomic import host_tag
from pytest_quant.models import (TINY_DIR, context_length, has_chat_template, remote_code_files, resolve_model,
                                 tokenizer_problem, weights_problem)

FAST = ("-p", "no:cacheprovider", "--quant-eval-tokens", "512", "--quant-recipes", "reference")
GATED = """
import pytest

@pytest.mark.perplexity_delta(max_rel=0.5)
def test_q(quant_model):
    pass
"""
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def model_folder(where: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of the embedded model (its weights linked, not copied), without the files in ``skip``."""
    where.mkdir(parents=True)
    for name in MODEL_FILES:
        if name in skip:
            continue
        if name == "model.safetensors":
            (where / name).symlink_to(TINY_DIR / name)
        else:
            shutil.copy(TINY_DIR / name, where / name)
    return where


def edit_json(path: Path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def usage_error(result: pytest.RunResult, *lines: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(list(lines))
    assert "pytest-quant: loading" not in result.stdout.str()  # before any model loads


# -- model folders -------------------------------------------------------------------------------------------


def test_the_embedded_model_passes_every_folder_check() -> None:
    assert weights_problem(TINY_DIR) is None and tokenizer_problem(TINY_DIR) is None
    assert remote_code_files(TINY_DIR) == [] and context_length(TINY_DIR) == 1024 and not has_chat_template(TINY_DIR)


@pytest.mark.parametrize("file", ["config.json", "tokenizer_config.json"])
def test_an_auto_map_is_found_in_the_file_that_holds_it(tmp_path: Path, file: str) -> None:
    folder = model_folder(tmp_path / "m")
    edit_json(folder / file, auto_map={"AutoTokenizer": ["tok_evil.EvilTokenizer", None]} if file != "config.json"
              else {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (found,) = remote_code_files(folder)
    assert found.startswith(f"{folder / file} (auto_map: ") and "evil" in found


def test_a_folder_with_its_own_code_is_refused_unless_trusted(pytester: pytest.Pytester) -> None:
    # sweep cases 6b, 6c, 7: refused late, per test, after transformers asked on stdin to run the code
    folder = model_folder(pytester.path / "m")
    edit_json(folder / "config.json", model_type="evilllama",
              auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest(*FAST, f"--quant-model={folder}"),
                f"*--quant-model {folder.resolve()}: the folder ships Python code that transformers would run to load "
                f"it: {folder.resolve() / 'config.json'} (auto_map: AutoModelForCausalLM -> modeling_evil.EvilForCausalLM)"
                "; pass --quant-trust-remote-code (ini quant_trust_remote_code = true) if you trust that code")
    trusted = pytester.runpytest(*FAST, f"--quant-model={folder}", "--quant-trust-remote-code", "--collect-only", "-q")
    assert trusted.ret == pytest.ExitCode.OK, trusted.stderr.str()
    pytester.makeini("[pytest]\nquant_trust_remote_code = true\n")
    assert pytester.runpytest(*FAST, f"--quant-model={folder}", "--collect-only", "-q").ret == pytest.ExitCode.OK


def test_the_trust_option_reaches_the_options(pytester: pytest.Pytester) -> None:
    from pytest_quant.options import QuantOptions

    assert QuantOptions.from_config(pytester.parseconfig("--quant-trust-remote-code")).trust_remote_code is True
    assert QuantOptions.from_config(pytester.parseconfig()).trust_remote_code is False


@pytest.mark.parametrize("weights, message", [
    ("pytorch_model.bin", "holds only pickled weights (pytorch_model.bin); pytest-quant loads *.safetensors only"),
])
def test_weights_no_backend_should_read_are_refused(tmp_path: Path, weights: str, message: str) -> None:
    folder = model_folder(tmp_path / "m", skip=("model.safetensors",))
    (folder / weights).write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=f"--quant-model '{folder}': {folder} " + message.replace("(", r"\(")
                       .replace(")", r"\)").replace("*", r"\*")):
        resolve_model(str(folder))
    (folder / "model.safetensors").symlink_to(TINY_DIR / "model.safetensors")  # beside safetensors: ignored
    assert resolve_model(str(folder)).path == folder.resolve()


def test_a_folder_without_tokenizer_files_is_a_usage_error(pytester: pytest.Pytester) -> None:
    # sweep case 26: "Couldn't instantiate the backend tokenizer ..." per test, after the model loaded
    folder = model_folder(pytester.path / "notok", skip=("tokenizer.json", "tokenizer_config.json"))
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest(*FAST, f"--quant-model={folder}"),
                f"*--quant-model '{folder}': {folder} has no tokenizer files (one of tokenizer.json, tokenizer.model*")


# -- prompts -------------------------------------------------------------------------------------------------


def test_a_prompt_is_measured_against_the_context_just_below_and_at_it(tmp_path: Path) -> None:
    counter = prompts_module.token_counter(TINY_DIR)
    assert counter.source == str(TINY_DIR / "tokenizer.json")
    fits = prompts_module.Prompt(text="The" + " The" * 1022, source="p.txt:1")  # a token a word, as AutoTokenizer counts
    assert counter.count(fits.text) == 1023
    prompts_module.check_fits((fits,), 1024, counter, "tiny")
    over = prompts_module.Prompt(text=fits.text + " The", source="p.txt:2")
    with pytest.raises(ValueError, match=r"prompts file p.txt:2: the prompt is 1024 tokens \(counted with .*tokenizer"
                                         r".json\), and tiny's context is 1024 tokens"):
        prompts_module.check_fits((fits, over), 1024, counter, "tiny")


def test_without_a_tokenizer_json_a_byte_bound_is_used_and_said(tmp_path: Path) -> None:
    counter = prompts_module.token_counter(tmp_path)
    assert counter.count is None
    short = prompts_module.Prompt(text="x" * 32 * 1023, source="p.txt:1")
    prompts_module.check_fits((short,), 1024, counter, "m")  # 1023 tokens at least: may fit
    with pytest.raises(ValueError, match=r"p.txt:2: the prompt is at least 1024 tokens \(32768 UTF-8 bytes, a token "
                                         r"being at most 32 bytes\)"):
        prompts_module.check_fits((prompts_module.Prompt(text="x" * 32 * 1024, source="p.txt:2"),), 1024, counter, "m")


def test_a_prompt_longer_than_the_context_is_refused_at_start_up(pytester: pytest.Pytester) -> None:
    # issue 20 item 4 (sweep case 28c): a 1 MB line hung the run at "generating 8 tokens greedily" until timeout
    (pytester.path / "big.txt").write_text("a short first prompt\n" + "The " * 250000 + "\n")
    pytester.makepyfile(GATED)
    started = time.perf_counter()
    usage_error(pytester.runpytest(*FAST, "--quant-prompts=big.txt"),
                "*--quant-prompts big.txt: prompts file big.txt:2: the prompt is at least 31250 tokens (1000000 UTF-8 "
                "bytes, a token being at most 32 bytes), and tiny's context is 1024 tokens*")
    assert time.perf_counter() - started < 30


def test_chat_prompts_need_a_chat_template_at_start_up(pytester: pytest.Pytester) -> None:
    # sweep case 28b: the clear message came at test setup, after the model loaded
    (pytester.path / "chat.jsonl").write_text('{"prompt": "Once upon a time"}\n'
                                              '{"messages": [{"role": "user", "content": "Hello"}]}\n')
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest(*FAST, "--quant-prompts=chat.jsonl"),
                '*--quant-prompts chat.jsonl: prompts file chat.jsonl:2: chat "messages" need a tokenizer with a chat '
                "template, and tiny has none*")


def test_a_chat_template_in_either_place_is_found(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "m")
    assert not has_chat_template(folder)
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert has_chat_template(folder)
    (folder / "chat_template.jinja").unlink()
    edit_json(folder / "tokenizer_config.json", chat_template="{{ messages[0]['content'] }}")
    assert has_chat_template(folder)


# -- eval text -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    (" \t\n\u00a0\u2003\u3000\n", "the file holds only whitespace"),
    ("🦙🦙 🚀✨\n🦙🦙🦙\n", "the file holds no letters or digits (only punctuation or symbols such as emoji)"),
], ids=["whitespace", "emoji"])
def test_an_eval_text_without_words_is_refused(tmp_path: Path, text: str, message: str) -> None:
    # sweep case 29: reference ppl 95528 on whitespace, 28821224 on emoji, gated without a note
    path = tmp_path / "eval.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(pytest.UsageError, match=f"--quant-eval-text {path}: {message.replace('(', '[(]').replace(')', '[)]')}"):
        startup.check_eval_text(path)
    path.write_text(text + "a word\n", encoding="utf-8")
    startup.check_eval_text(path)


def test_an_emoji_eval_text_is_a_usage_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "emoji.txt").write_text("🦙🦙🦙 🚀\n", encoding="utf-8")
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest(*FAST, "--quant-eval-text=emoji.txt"),
                "*--quant-eval-text emoji.txt: the file holds no letters or digits*")


# -- decode batch --------------------------------------------------------------------------------------------


def test_the_decode_memory_estimate_grows_with_the_batch_and_bounds_it(monkeypatch) -> None:
    config = json.loads((TINY_DIR / "config.json").read_text())
    one = startup.decode_memory_bytes(config, 1, "cpu", 0)
    # tiny on CPU: KV 2 x 6 layers x 4 heads x 64 x 168 positions x 4 B, prefill 128 x (512 + 768) x 4 B, logits 8192 x 4 B
    assert one == 2 * 6 * 4 * 64 * 168 * 4 + 128 * (2 * 256 + 768) * 4 + 8192 * 4
    assert startup.decode_memory_bytes(config, 10, "cpu", 100) == 100 + 10 * one
    weights = (TINY_DIR / "model.safetensors").stat().st_size
    monkeypatch.setattr("pytest_quant.hardware.device_memory_bytes", lambda device: weights + 1000 * one)
    assert startup.decode_batch_problem(TINY_DIR, 1000, "cpu") is None  # just fits
    problem = startup.decode_batch_problem(TINY_DIR, 1001, "cpu")
    assert problem.startswith("--quant-decode-batch 1001: decoding 1001 sequences of tiny needs at least ")
    assert problem.endswith("give at most about 1000")


def test_without_a_memory_figure_a_hard_cap_applies(monkeypatch) -> None:
    monkeypatch.setattr("pytest_quant.hardware.device_memory_bytes", lambda device: None)
    assert startup.decode_batch_problem(TINY_DIR, startup.MAX_DECODE_BATCH, "cpu") is None
    assert startup.decode_batch_problem(TINY_DIR, startup.MAX_DECODE_BATCH + 1, "cpu") == (
        f"--quant-decode-batch {startup.MAX_DECODE_BATCH + 1}: more than {startup.MAX_DECODE_BATCH} sequences; "
        f"give at most {startup.MAX_DECODE_BATCH}")


def test_a_decode_batch_past_memory_is_a_usage_error(pytester: pytest.Pytester) -> None:
    # sweep case 23: 35 s in, an allocator traceback "you tried to allocate 131072000000 bytes"
    pytester.makepyfile(GATED)
    usage_error(pytester.runpytest(*FAST, "--quant-decode-batch=1000000"),
                "*--quant-decode-batch 1000000: decoding 1000000 sequences of tiny needs at least * and cpu has *; "
                "give at most about *")


# -- the cache folder ----------------------------------------------------------------------------------------


def test_start_up_removes_killed_writers_temporary_files_from_the_cache(pytester: pytest.Pytester) -> None:
    # sweep case 21: .tmp files of 60-115 MB in cache/references that no later run removed
    references = pytester.path / "cache" / "references"
    references.mkdir(parents=True)
    dead_pid = 2 ** 22 + 12345  # above the kernel's pid range: no such process
    dead = references / f".tiny-7344.safetensors.{host_tag()}.{dead_pid}.7slqwtsl.tmp"
    young = references / f".tiny-7344.safetensors.{host_tag()}.{dead_pid}.apflbr0c.tmp"
    live = references / f".tiny-7344.safetensors.{host_tag()}.{os.getppid()}.zzzzzzzz.tmp"
    for path in (dead, young, live):
        path.write_bytes(b"\x00" * 1024)
    old = time.time() - 3600
    for path in (dead, live):
        os.utime(path, (old, old))
    pytester.makepyfile(GATED)
    assert pytester.runpytest(*FAST, "--quant-cache-dir=cache", "--collect-only", "-q").ret == pytest.ExitCode.OK
    assert not dead.exists() and young.exists() and live.exists()


# -- options, recipes, files and folders checked at start-up (sweep 2026-11) --------------------------------

def errors_section(out: str) -> str:
    """The ERRORS section alone: the short summary repeats each message in full where the terminal is wide (CI)."""
    return out.partition("= ERRORS =")[2].partition("short test summary info")[0]


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
    folder = model_folder(pytester.path / "m", skip=("model.safetensors",))
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

"""``python -m pytest_quant cache-key``: a stable key over versions and the project's settings, its errors,
and the example GitHub Actions workflow that uses it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_quant
from pytest_quant import cache_key, qcache
from pytest_quant.__main__ import parser
from pytest_quant.hardware import LIBRARIES, library_versions

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "examples" / "github-actions-gpu.yml"
KEY = re.compile(rf"pytest-quant-q{qcache.FORMAT}-[0-9a-f]{{16}}")

PYPROJECT = """\
[project]
name = "my-models"
version = "1.0"

[tool.pytest.ini_options]
addopts = "-ra"
quant_recipes = "bnb-nf4,gptq-w4g128"
quant_eval_tokens = "4096"

[tool.pytest-quant.recipes.int8-t4]
backend = "bitsandbytes"
load_in_8bit = true
llm_int8_threshold = 4.0
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_quant", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def key_of(cwd: Path, *args: str) -> str:
    out = cli("cache-key", *args, cwd=cwd)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    line = out.stdout.strip()
    assert out.stdout.count("\n") == 1 and KEY.fullmatch(line), out.stdout
    return line


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(text)
    return folder / "pyproject.toml"


def test_same_inputs_give_the_same_key_from_the_command_and_the_function(tmp_path: Path) -> None:
    project = write(tmp_path / "a", PYPROJECT)
    key = key_of(project.parent)
    assert key == key_of(project.parent)
    assert key == key_of(tmp_path, "--pyproject", str(project))  # --pyproject names the same file
    assert key == cache_key.compute(project).key
    # The key hashes the contents, not where the checkout is.
    assert key == key_of(write(tmp_path / "elsewhere" / "b", PYPROJECT).parent)
    # The same settings written in another order or layout give the same key (canonical JSON).
    reordered = PYPROJECT.replace('quant_recipes = "bnb-nf4,gptq-w4g128"\nquant_eval_tokens = "4096"',
                                  'quant_eval_tokens = "4096"\nquant_recipes = "bnb-nf4,gptq-w4g128"')
    reordered = reordered.replace('llm_int8_threshold = 4.0\n', "").replace(
        'backend = "bitsandbytes"', 'llm_int8_threshold = 4.0\nbackend = "bitsandbytes"')
    assert reordered != PYPROJECT
    assert cache_key.compute(write(tmp_path / "c", reordered)).key == key


@pytest.mark.parametrize("old, new", [
    ('llm_int8_threshold = 4.0', 'llm_int8_threshold = 5.0'),                  # a recipe field
    ('[tool.pytest-quant.recipes.int8-t4]', '[tool.pytest-quant.recipes.int8-t5]'),  # a recipe's name
    ('quant_recipes = "bnb-nf4,gptq-w4g128"', 'quant_recipes = "bnb-nf4"'),   # a quant_ ini key's value
    ('addopts = "-ra"', 'addopts = "-ra"\nquant_reference_top_k = "exact"'),   # a quant_ ini key added
])
def test_the_plugins_settings_change_the_key(tmp_path: Path, old: str, new: str) -> None:
    assert old in PYPROJECT
    before = cache_key.compute(write(tmp_path / "before", PYPROJECT))
    after = cache_key.compute(write(tmp_path / "after", PYPROJECT.replace(old, new)))
    assert after.key != before.key
    assert key_of(tmp_path / "after") == after.key


@pytest.mark.parametrize("old, new", [
    ('version = "1.0"', 'version = "2.0"'),                                    # the project's own metadata
    ('addopts = "-ra"', 'addopts = "-ra -x"\ntestpaths = ["tests"]'),          # pytest's own ini keys
    ('[project]', '[tool.black]\nline-length = 100\n\n[project]'),             # another tool's table
])
def test_unrelated_settings_do_not_change_the_key(tmp_path: Path, old: str, new: str) -> None:
    assert old in PYPROJECT
    before = cache_key.compute(write(tmp_path / "before", PYPROJECT))
    assert key_of(write(tmp_path / "after", PYPROJECT.replace(old, new)).parent) == before.key


def test_without_a_pyproject_the_key_covers_versions_only(tmp_path: Path) -> None:
    bare = key_of(tmp_path)  # no ./pyproject.toml: not an error
    explained = json.loads(cli("cache-key", "--explain", cwd=tmp_path).stdout)
    assert explained["key"] == bare and explained["pyproject"] is None and explained["inputs"]["settings"] is None
    assert bare != key_of(write(tmp_path / "p", PYPROJECT).parent)
    # A pyproject.toml without any pytest-quant settings still counts as one (settings: two empty tables).
    assert key_of(write(tmp_path / "q", '[project]\nname = "x"\n').parent) != bare


def test_explain_prints_the_inputs_with_the_versions(tmp_path: Path) -> None:
    project = write(tmp_path, PYPROJECT)
    out = cli("cache-key", "--explain", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    explained = json.loads(out.stdout)
    assert explained["key"] == key_of(tmp_path)
    assert explained["pyproject"] == "pyproject.toml"
    inputs = explained["inputs"]
    assert inputs["format"] == qcache.FORMAT and inputs["pytest-quant"] == pytest_quant.__version__
    names = (*LIBRARIES, "torchao", "onnxruntime", "neural-compressor", "nvidia-modelopt")
    assert set(names) <= set(inputs["libraries"])
    assert inputs["libraries"] == library_versions(cache_key.KEY_LIBRARIES, missing="-")
    assert inputs["libraries"]["torch"] == library_versions(("torch",))["torch"]  # installed: a real version
    assert inputs["settings"] == {
        "tool.pytest-quant": {"recipes": {"int8-t4": {"backend": "bitsandbytes", "load_in_8bit": True,
                                                      "llm_int8_threshold": 4.0}}},
        "tool.pytest.ini_options": {"quant_recipes": "bnb-nf4,gptq-w4g128", "quant_eval_tokens": "4096"},
    }
    # The key is the digest of exactly what --explain shows.
    assert cache_key.digest(inputs) == explained["key"] == cache_key.compute(project).key


def test_the_versions_and_the_cache_format_change_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = cache_key.key_inputs(None)
    key = cache_key.digest(inputs)
    assert key.startswith(f"pytest-quant-q{qcache.FORMAT}-")
    for name in ("torch", "gptqmodel", "torchao", "nvidia-modelopt"):
        changed = {**inputs, "libraries": {**inputs["libraries"], name: "99.0"}}
        assert cache_key.digest(changed) != key, name
    assert cache_key.digest({**inputs, "pytest-quant": "9.9.9"}) != key
    monkeypatch.setattr(cache_key, "library_versions", lambda names, missing=None: {n: "1.0" for n in names})
    assert cache_key.digest(cache_key.key_inputs(None)) != key


def test_the_command_imports_no_torch(tmp_path: Path) -> None:
    code = ("import runpy, sys; sys.argv = ['pytest_quant', 'cache-key']; "
            "exec('try:\\n runpy.run_module(\"pytest_quant\", run_name=\"__main__\")\\nexcept SystemExit: pass'); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert KEY.fullmatch(out.stdout.splitlines()[0]) and out.stdout.splitlines()[1] == "False False"


def test_a_missing_pyproject_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "pyproject.toml"
    out = cli("cache-key", "--pyproject", str(missing), cwd=tmp_path)
    assert out.returncode == 4 and out.stdout == ""
    assert str(missing) in out.stderr and "cannot read it" in out.stderr
    with pytest.raises(cache_key.SettingsError, match=re.escape(str(missing))):
        cache_key.compute(missing)


def test_broken_toml_is_a_usage_error_naming_the_file_and_the_error(tmp_path: Path) -> None:
    broken = tmp_path / "conf" / "broken.toml"
    broken.parent.mkdir()
    broken.write_text('[tool.pytest-quant\nrecipes = 1\n')
    out = cli("cache-key", "--pyproject", str(broken), cwd=tmp_path)
    assert out.returncode == 4 and out.stdout == ""
    assert str(broken) in out.stderr and "not valid TOML" in out.stderr and "line 1" in out.stderr
    # The default ./pyproject.toml, when it is there but broken, cannot be keyed either.
    write(tmp_path / "d", "x = [\n")
    out = cli("cache-key", cwd=tmp_path / "d")
    assert out.returncode == 4 and "pyproject.toml: not valid TOML" in out.stderr


def test_an_unknown_subcommand_lists_cache_key(tmp_path: Path) -> None:
    for args in (("cache-kee",), ()):
        out = cli(*args, cwd=tmp_path)
        assert out.returncode == 2 and "cache-key" in out.stderr and out.stdout == ""


# The example workflow.

def run_scripts(workflow: dict) -> list[str]:
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]


def command_lines(script: str, command: str) -> list[list[str]]:
    """The arguments after ``command`` on each line of ``script`` that runs it; ``${{ ... }}`` is one word."""
    plain = re.sub(r"\$\{\{[^}]*\}\}", "EXPR", script)
    return [shlex.split(m.group(1)) for m in re.finditer(rf"(?:^|\$\(|\s)" + re.escape(command) + r"\b([^)\n]*)",
                                                         plain, re.MULTILINE)]


def undashed(flag: str) -> str:
    return flag[:2] + flag[2:].replace("-", "") if flag.startswith("--") else flag


@pytest.fixture(scope="module")
def workflow() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(WORKFLOW.read_text())


def test_the_workflow_gates_each_runner_kind_with_the_plugins_cache(workflow: dict) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request", "workflow_dispatch"} <= set(triggers)
    assert "runner_kind" in triggers["workflow_dispatch"]["inputs"]
    gate = workflow["jobs"]["gate"]
    assert gate["runs-on"] == "${{ matrix.runner }}"
    kinds = gate["strategy"]["matrix"]["include"]
    assert len(kinds) >= 2 and all({"kind", "runner"} <= set(k) for k in kinds)
    assert set(triggers["workflow_dispatch"]["inputs"]["runner_kind"]["options"]) == {k["kind"] for k in kinds}
    steps = {s.get("uses", "").split("@")[0]: s for s in gate["steps"]}
    cache = steps["actions/cache"]["with"]
    assert cache["path"] == ".quant-cache" and cache["key"] == "${{ steps.key.outputs.key }}-${{ matrix.kind }}"
    assert cache["restore-keys"].strip() == "${{ steps.key.outputs.prefix }}"
    assert steps["actions/upload-artifact"]["if"] == "always()"
    assert steps["mikepenz/action-junit-report"]["if"] == "always()"
    gate_run = " ".join(run_scripts({"jobs": {"gate": gate}}))
    assert "--quant-cache-dir=.quant-cache" in gate_run and "-n auto" in gate_run and "--quant-gpu" in gate_run
    record = workflow["jobs"]["record-baselines"]
    assert record["if"] == "github.event_name == 'workflow_dispatch'" and record["permissions"] == {"contents": "write"}
    record_run = "\n".join(run_scripts({"jobs": {"r": record}}))
    assert "--snapshot-update" in record_run and "git add baselines" in record_run


def test_the_key_step_matches_the_commands_key_and_prefix(workflow: dict, tmp_path: Path) -> None:
    script = next(s["run"] for s in workflow["jobs"]["gate"]["steps"] if s.get("id") == "key")
    write(tmp_path, PYPROJECT)
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GITHUB_OUTPUT": str(tmp_path / "out"),
                              "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    outputs = dict(line.split("=", 1) for line in (tmp_path / "out").read_text().splitlines())
    assert outputs["key"] == key_of(tmp_path)
    assert outputs["prefix"] == cache_key.PREFIX and outputs["key"].startswith(outputs["prefix"])


def test_every_option_the_workflow_passes_is_registered(workflow: dict, tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    from pytest_quant.options import OPTIONS

    quant_flags = {o.flag for o in OPTIONS}
    help_text = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=300).stdout
    # pytest's help shows one of two long forms that differ only in dashes (--junit-xml for --junitxml).
    known = {undashed(f) for f in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text)}
    assert {"-n", "--snapshotupdate", "--quantgpu"} <= known, "pytest --help lists xdist, syrupy and pytest-quant"
    used: set[str] = set()
    for script in run_scripts(workflow):
        for args in command_lines(script, "pytest"):
            for arg in args:
                if arg.startswith("-"):
                    flag = arg.split("=", 1)[0]
                    used.add(flag)
                    if flag.startswith("--quant-"):
                        assert flag in quant_flags, f"{flag} is not a pytest-quant option"
                    assert undashed(flag) in known, f"{flag} is not in pytest --help"
        for args in command_lines(script, "python -m pytest_quant"):
            parser().parse_args(args)  # exits 2 on an unknown subcommand or option
    assert {"--quant-gpu", "-n", "--quant-cache-dir", "--junitxml", "--quant-report", "--snapshot-update"} <= used

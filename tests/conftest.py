"""Shared helpers for the plugin's own tests."""

from __future__ import annotations

import pytest

# pytester's in-process runs put sys.modules back as it was after each run. torch and the libraries
# built on it register native operators when first imported and cannot be imported a second time into
# one process, so library modules imported during a run are kept; only the runs' own test modules and
# conftests are dropped.
import torch  # noqa: F401


def _keep_library_modules(name: str) -> bool:
    return not name.startswith(("test_", "conftest"))


@pytest.fixture(autouse=True)
def _pytester_keeps_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        pytest.Pytester,
        "_Pytester__take_sys_modules_snapshot",
        lambda self: _pytester_module.SysModulesSnapshot(preserve=_keep_library_modules),
    )


from _pytest import pytester as _pytester_module  # noqa: E402

# Small and fast: enough tokens to tell recipes apart, few enough for a 2-core CI machine.
FAST = ("--quant-eval-tokens", "1024")


@pytest.fixture
def run_quant(pytester: pytest.Pytester):
    """Run pytest in-process on a test file written into a fresh directory."""

    def run(source: str, *args: str, ini: str | None = None) -> pytest.RunResult:
        pytester.makepyfile(test_model_repo=source)
        if ini is not None:
            pytester.makeini(ini)
        return pytester.runpytest(*FAST, "-p", "no:cacheprovider", *args)

    return run


@pytest.fixture(scope="module")
def tiny():
    """The embedded model in float32 on CPU and its tokenizer, loaded once per test module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_quant.models import TINY_DIR

    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32).eval()
    return model, tokenizer

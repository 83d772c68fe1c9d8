"""run.live: what a backend hands back is checked before it is used, and who holds a released model."""

from __future__ import annotations

import pytest

from pytest_quant.backends import Loaded
from pytest_quant.run.live import loaded_problem, holders

KEPT: object = None


@pytest.mark.parametrize("loaded, words", [
    (None, "as NoneType, not a pytest_quant.backends.Loaded"),
    (Loaded(None, None, "float32"), "as Loaded(None, ...): no model"),
    (Loaded("not a model", None, "float32"), "as a str, which cannot be called on tokens"),
])
def test_a_bad_backend_result_is_named(loaded, words) -> None:
    assert loaded_problem(loaded) == words


def test_a_callable_model_is_fine() -> None:
    assert loaded_problem(Loaded(lambda ids: ids, None, "float32")) is None


def test_holders_names_a_module_global_that_keeps_an_object() -> None:
    global KEPT
    KEPT = object.__new__(type("Model", (), {}))
    try:
        assert holders(KEPT) == [f"{__name__}.KEPT"]
    finally:
        KEPT = None


def test_holders_names_a_module_global_after_a_gc_freeze() -> None:
    """gc.get_referrers does not see frozen containers (a module dict frozen by gc.freeze): the name is still found."""
    import gc
    import sys
    import types

    module = types.ModuleType("quant_frozen_holder")
    module.KEPT = object.__new__(type("Model", (), {}))
    sys.modules[module.__name__] = module
    frozen_before = gc.get_freeze_count() > 0  # the test process keeps its libraries frozen (tests/conftest.py)
    gc.freeze()
    try:
        assert holders(module.KEPT) == ["quant_frozen_holder.KEPT"]
    finally:
        if not frozen_before:
            gc.unfreeze()
        del sys.modules[module.__name__]


def test_a_backend_library_import_is_timed_on_its_own() -> None:
    """What a backend names in ``imports`` (a module, or "module:function" importing it as it must be) is
    imported before the timed load: import_s is that; None where a backend names nothing."""
    from pytest_quant.backends import Backend, BackendError
    from pytest_quant.run.live import timed_import

    assert timed_import(Backend("plain", "x:y")) is None
    seconds = timed_import(Backend("std", "x:y", imports=("json", "tests.run.test_live:_record_call")))
    assert seconds is not None and seconds >= 0 and _CALLS == ["imported"]
    with pytest.raises(BackendError, match="no_such_module"):
        timed_import(Backend("bad", "x:y", imports=("no_such_module:f",)))


_CALLS: list[str] = []


def _record_call() -> None:
    _CALLS.append("imported")


def test_a_failed_cuda_load_leaves_no_inductor_setting_behind(tmp_path, monkeypatch) -> None:
    """A library that changes inductor's process-wide settings and then fails half way (torchao-fp8's per-row
    float8 on float16 weights did, after turning on coordinate-descent tuning) leaves them as they were."""
    from types import SimpleNamespace

    pytest.importorskip("torch")
    import torch._inductor.config as inductor_config

    from pytest_quant.backends import Backend
    from pytest_quant.run.live import Live

    def load(request):
        inductor_config.coordinate_descent_tuning = not tuning
        raise RuntimeError("half way")

    tuning = inductor_config.coordinate_descent_tuning
    monkeypatch.setattr("pytest_quant.measure.vram.VramTracker", lambda *devices: None)  # no GPU here
    recipe = SimpleNamespace(name="failing", backend="failing", options={}, kv_cache=None)
    pair = SimpleNamespace(model=SimpleNamespace(name="m", path=tmp_path), recipe=recipe, id="m-failing")
    placement = SimpleNamespace(device="cuda:0", devices=("cuda:0",), label="cuda:0")
    live = Live({"failing": Backend("failing", load)}, placement, tmp_path, None, None, lambda line: None)
    with pytest.raises(RuntimeError, match="half way"):
        live.open(pair)
    assert inductor_config.coordinate_descent_tuning is tuning

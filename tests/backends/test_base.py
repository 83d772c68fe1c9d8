"""The helpers backends share: a stored import error's frames no longer keep a loaded model alive; a CPU-only
backend's settings."""

from __future__ import annotations

import gc
import sys
import types
import weakref

import pytest

from pytest_quant.backends.base import drop_import_tracebacks, import_off_stack


class Model:
    """Stands for a loaded model: something a caller's frame holds while a library is first imported."""


def _import_optional(module: types.ModuleType) -> None:
    try:
        raise ModuleNotFoundError("No module named 'llama_cpp'")
    except ModuleNotFoundError as error:  # as GPTQModel's gguf_cpp keeps _LLAMA_CPP_IMPORT_ERROR
        module._IMPORT_ERROR = error


def _load(module: types.ModuleType):
    model = Model()
    _import_optional(module)  # the first import happens while the model is a local of this frame
    return weakref.ref(model)


def test_a_kept_import_error_holds_the_callers_model_until_its_traceback_is_dropped(monkeypatch) -> None:
    library = types.ModuleType("fakelib.kernels")
    monkeypatch.setitem(sys.modules, "fakelib.kernels", library)
    model = _load(library)
    gc.collect()
    assert model() is not None  # held: error -> traceback -> _import_optional's frame -> f_back: _load's frame
    assert drop_import_tracebacks("otherlib") == 0 and model() is not None  # other packages are left alone
    assert drop_import_tracebacks("fakelib") == 1
    gc.collect()
    assert model() is None
    assert str(library._IMPORT_ERROR) == "No module named 'llama_cpp'"  # the message stays


_KEEPS_ITS_ERROR_IN_A_CLASS = """
class Solver:  # as PuLP's COPT_DLL keeps the error of a missing DLL, imported by ModelOpt 0.47
    try:
        open(None)
    except Exception as e:
        err = e
"""


@pytest.mark.parametrize("off_stack", [False, True])
def test_a_library_imported_off_the_stack_keeps_no_frame_of_the_load_that_imported_it(off_stack, tmp_path,
                                                                                       monkeypatch) -> None:
    name = f"solverlib_{int(off_stack)}"
    (tmp_path / f"{name}.py").write_text(_KEEPS_ITS_ERROR_IN_A_CLASS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)

    def load():
        if off_stack:
            import_off_stack(name)
        __import__(name)  # a plain first import inside load, as a backend's load does
        model = Model()
        return model

    model = weakref.ref(load())
    gc.collect()
    assert (model() is None) is off_stack  # imported in load: kept by Solver.err's traceback; off the stack: freed
    assert isinstance(sys.modules[name].Solver.err, TypeError)


def test_import_off_stack_raises_a_missing_modules_error_in_the_caller() -> None:
    with pytest.raises(ModuleNotFoundError, match="no_such_library_xyz"):
        import_off_stack("json", "no_such_library_xyz")
    assert "json" in sys.modules


def test_cpu_settings_refuses_another_device_then_merges_and_validates() -> None:
    from types import SimpleNamespace

    from pytest_quant.backends.base import cpu_settings

    seen = []
    request = SimpleNamespace(device="cuda:0", recipe=SimpleNamespace(options={"bits": 4}))
    with pytest.raises(ValueError, match=r"^onnxruntime runs on CPU only \(CPUExecutionProvider\); got device 'cuda:0'$"):
        cpu_settings(request, "onnxruntime", "CPUExecutionProvider", {"bits": 8, "group": 32}, seen.append)
    assert seen == []  # refused before any validation
    request.device = "cpu"
    assert cpu_settings(request, "x", "why", {"bits": 8, "group": 32}, seen.append) == {"bits": 4, "group": 32}
    assert seen == [{"bits": 4, "group": 32}]

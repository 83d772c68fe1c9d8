"""The helpers backends share: a stored import error's frames no longer keep a loaded model alive; a CPU-only
backend's settings."""

from __future__ import annotations

import gc
import sys
import types
import weakref

import pytest

from pytest_quant.backends.base import drop_import_tracebacks, off_stack


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


@pytest.mark.parametrize("through_the_registry", [False, True])
def test_a_library_a_backend_imports_keeps_no_frame_of_the_load_that_made_the_model(through_the_registry, tmp_path,
                                                                                      monkeypatch) -> None:
    from pytest_quant.backends import Backend, LoadRequest

    name = f"solverlib_{int(through_the_registry)}"
    (tmp_path / f"{name}.py").write_text(_KEEPS_ITS_ERROR_IN_A_CLASS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)

    def load(request):
        __import__(name)  # a plain import inside load, as a backend's load does: the first one unless imported before
        model = Model()
        return model

    backend = Backend("solver", load, imports=(name,))
    request = LoadRequest(model_path=tmp_path, recipe=None, device="cpu", cache_dir=tmp_path)
    model = weakref.ref(backend.load_model(request) if through_the_registry else load(request))
    gc.collect()
    # called directly, load imports the library first: Solver.err's traceback keeps its frame and the model;
    # through the registry, the backend's imports ran first, off the stack, and nothing keeps the model
    assert (model() is None) is through_the_registry
    assert isinstance(sys.modules[name].Solver.err, TypeError)


def test_off_stack_raises_what_its_call_raised_in_the_caller() -> None:
    import importlib

    with pytest.raises(ModuleNotFoundError, match="no_such_library_xyz"):
        off_stack(lambda: importlib.import_module("no_such_library_xyz"))
    seen = []
    off_stack(lambda: seen.append(1))
    assert seen == [1]


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

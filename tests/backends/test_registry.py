"""The backend registry: lazily named entries that cannot be imported, and collisions, named at start-up."""

from __future__ import annotations

import pytest

from pytest_quant.backends import BUILTIN_BACKENDS, Backend, BackendError, Registry


def noop_load(request):
    raise AssertionError("not loaded in these tests")


def test_a_lazy_backend_whose_module_is_missing_is_refused_when_registered() -> None:
    # sweep case 34: Backend("lazy", "no_such_module:load", ...) gave INTERNALERROR ModuleNotFoundError
    registry = Registry(BUILTIN_BACKENDS)
    with pytest.raises(BackendError, match=r"backend 'lazy': load = 'no_such_module:load': no module named "
                                           r"'no_such_module' is installed"):
        registry.add(Backend("lazy", "no_such_module:load", validate="no_such_module:validate"))
    assert "lazy" not in registry


@pytest.mark.parametrize("target, message", [
    ("pytest_quant.backends.no_such_submodule:load", "module 'pytest_quant.backends.no_such_submodule' cannot be imported"),
    ("pytest_quant.backends.common:no_such_function", "module 'pytest_quant.backends.common' has no 'no_such_function'"),
])
def test_a_validate_target_that_does_not_resolve_names_the_backend(target: str, message: str) -> None:
    registry = Registry(())
    registry.add(Backend("mine", noop_load, validate=target))
    with pytest.raises(BackendError, match=f"backend 'mine': validate = '{target}': {message}"):
        registry["mine"].check({})


def test_a_malformed_target_is_refused() -> None:
    with pytest.raises(BackendError, match="load = 'no-colon' is not a 'module:function' string"):
        Registry(()).add(Backend("mine", "no-colon"))


def test_a_name_registered_twice_names_both_sources() -> None:
    registry = Registry(BUILTIN_BACKENDS)
    with pytest.raises(BackendError, match="backend 'bitsandbytes' is registered twice: by pytest-quant's built-in "
                                           "backends and by plugin 'conftest.py'; rename one of them"):
        registry.add(Backend("bitsandbytes", noop_load), "plugin 'conftest.py'")
    with pytest.raises(BackendError) as raised:
        registry.add(Backend("bitsandbytes", noop_load))
    assert str(raised.value) == ("backend 'bitsandbytes' is registered twice: by pytest-quant's built-in backends and "
                                 f"by a plugin whose load is defined in {__file__}; rename one of them")


def test_add_from_hook_names_the_plugin_of_each_implementation(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
from pytest_quant.backends import Backend

def pytest_quant_backends(config):
    return [Backend("bitsandbytes", lambda request: None)]
""")
    pytester.makepyfile("def test_nothing(): pass")
    config = pytester.parseconfig()  # conftests loaded; pytest_configure (which registers) not run
    registry = Registry(BUILTIN_BACKENDS)
    with pytest.raises(BackendError) as raised:
        registry.add_from_hook(config.hook.pytest_quant_backends, config=config)
    assert "registered twice: by pytest-quant's built-in backends and by plugin" in str(raised.value)
    assert "conftest.py" in str(raised.value)


def test_a_collision_through_the_hook_names_the_conftest_at_start_up(pytester: pytest.Pytester) -> None:
    # sweep case 34: "backend 'bitsandbytes' is registered twice" did not say who registered it
    conftest = pytester.makeconftest("""
from pytest_quant.backends import Backend

def load(request):
    raise AssertionError("not loaded")

def pytest_quant_backends(config):
    return [Backend("bitsandbytes", load)]
""")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-recipes", "reference")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*backend 'bitsandbytes' is registered twice: by pytest-quant's built-in backends "
                                 f"and by *{conftest}*; rename one of them"])


def test_a_missing_lazy_module_is_a_usage_error_at_start_up(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
from pytest_quant.backends import Backend

def pytest_quant_backends(config):
    return [Backend("lazy", "no_such_module:load", validate="no_such_module:validate")]
""")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-recipes", "reference")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*backend 'lazy': load = 'no_such_module:load': no module named 'no_such_module'*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()

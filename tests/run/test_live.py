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

"""pytest-quant's own hooks, for plugins and conftest files."""

from __future__ import annotations

import pytest


@pytest.hookspec
def pytest_quant_backends(config: pytest.Config) -> list:
    """Return ``pytest_quant.backends.Backend`` entries to add to the registry (all implementations are
    called; their lists are joined). A recipe names a backend by its ``name``::

        from pytest_quant.backends import Backend, Loaded

        def load_toy(request):
            model = ...  # a causal LM on request.device, from request.model_path
            return Loaded(model, tokenizer, dtype="float32", kernel="ToyLinear")

        def pytest_quant_backends(config):
            return [Backend("toy", load_toy, requires=("toylib",), install_hint="pip install toylib")]
    """

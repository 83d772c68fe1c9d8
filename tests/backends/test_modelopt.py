"""backends.modelopt: imports lightly and needs CUDA."""

from __future__ import annotations

import pytest

from .helpers import request_for


# -- NVIDIA Model Optimizer ------------------------------------------------------------------------------------

def test_modelopt_imports_and_needs_cuda():
    pytest.importorskip("modelopt.torch.quantization", reason="pip install 'pytest-quant[modelopt]'")
    from pytest_quant.backends import modelopt

    with pytest.raises(ValueError, match="needs CUDA"):
        modelopt.load(request_for(format="fp8"))

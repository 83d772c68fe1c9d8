"""backends.torch_dynamic on CPU: torch.ao dynamic int8 and its torchao successor, close to fp32 and smaller."""

from __future__ import annotations

import pytest

from .helpers import check_loaded, request_for


# -- PyTorch dynamic int8 ------------------------------------------------------------------------------------

def test_torch_dynamic_int8(reference):
    from pytest_quant.backends import torch_dynamic

    loaded = torch_dynamic.load(request_for(api="torch.ao"))
    assert loaded.kernel == "DynamicQuantizedLinear"
    assert "deprecated" in loaded.notes["deprecation"]  # torch deprecates torch.ao.quantization
    check_loaded(loaded, reference, min_top1=0.8, trim_atol=0.5)
    # int8 linears (lm_head included, untied) + the fp32 embedding: about 15 MiB of fp32's 27.5
    assert loaded.model.get_memory_footprint() < 0.6 * reference["footprint"]


def test_torch_dynamic_int8_torchao_successor(reference):
    pytest.importorskip("torchao", reason="pip install 'pytest-quant[torchao]'")
    from pytest_quant.backends import torch_dynamic

    loaded = torch_dynamic.load(request_for(api="torchao"))
    assert loaded.kernel.startswith("Linear(")
    check_loaded(loaded, reference, min_top1=0.8)


def test_torch_dynamic_refuses_cuda():
    from pytest_quant.backends import torch_dynamic

    with pytest.raises(ValueError, match="CPU only"):
        torch_dynamic.load(request_for(device="cuda:0"))

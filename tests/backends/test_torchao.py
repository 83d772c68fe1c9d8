"""backends.torchao on CPU: the CPU recipes close to fp32 and smaller; CUDA-only types fail clearly."""

from __future__ import annotations

import pytest

from .helpers import check_loaded, request_for


# -- torchao ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "settings",
    [
        {"quant_type": "int8_weight_only"},
        {"quant_type": "int8_dynamic_activation_int8_weight"},
        {"quant_type": "intx_weight_only", "bits": 4, "group_size": 128},
        {"quant_type": "float8_weight_only"},
    ],
    ids=lambda s: s["quant_type"],
)
def test_torchao_on_cpu(reference, settings):
    pytest.importorskip("torchao", reason="pip install 'pytest-quant[torchao]'")
    from pytest_quant.backends import torchao

    loaded = torchao.load(request_for(**settings))
    assert loaded.kernel.startswith("Linear(")
    check_loaded(loaded, reference, min_top1=0.8)


@pytest.mark.parametrize("quant_type", ["int4_weight_only", "float8_dynamic_activation_float8_weight"])
def test_torchao_cuda_only_types_fail_clearly_on_cpu(quant_type):
    from pytest_quant.backends import torchao

    with pytest.raises(ValueError, match="needs CUDA"):
        torchao.load(request_for(quant_type=quant_type, dtype="bfloat16"))

"""backends.neural_compressor on CPU: RTN weight-only w4/w8 close to fp32 and smaller."""

from __future__ import annotations

import pytest

from .helpers import check_loaded, request_for


# -- Intel Neural Compressor ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "settings, min_top1",
    [({"algorithm": "rtn", "bits": 4}, 0.7), ({"algorithm": "rtn", "bits": 8}, 0.9),
     pytest.param({"algorithm": "gptq", "bits": 4, "calibration_samples": 4, "calibration_seq_len": 64}, 0.7,
                  marks=pytest.mark.slow)],  # about 2.5 minutes on 2 cores
    ids=["rtn-w4", "rtn-w8", "gptq-w4"],
)
def test_neural_compressor_weight_only(reference, settings, min_top1):
    pytest.importorskip("neural_compressor.torch", reason="pip install 'pytest-quant[inc]'")
    from pytest_quant.backends import neural_compressor

    request = request_for(**settings)
    loaded = neural_compressor.load(request)
    assert loaded.kernel == "INCWeightOnlyLinear"
    assert request.before_load_calls == [True]
    check_loaded(loaded, reference, min_top1=min_top1)

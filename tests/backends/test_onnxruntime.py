"""backends.onnxruntime: dynamic int8 through an ONNX export, and its cache; CUDA refused."""

from __future__ import annotations

import pytest

from .helpers import check_loaded, request_for


# -- ONNX Runtime --------------------------------------------------------------------------------------------

@pytest.mark.slow  # the export takes 1-2.5 minutes on 2 cores; the shipped gate (main command) runs it cold
def test_onnxruntime_dynamic_int8_and_its_cache(reference, tmp_path):
    for name in ("onnxruntime", "onnx", "onnxscript"):
        pytest.importorskip(name, reason="pip install 'pytest-quant[onnx]'")
    from pytest_quant.backends import onnxruntime

    first = onnxruntime.load(request_for(cache_dir=tmp_path, weight_type="QInt8"))
    assert first.cache == "miss" and first.quantize_seconds > 0
    assert "MatMulInteger" in first.kernel
    assert first.model.generation_config.eos_token_id == 0  # tiny's, as greedy generation reads it
    check_loaded(first, reference, min_top1=0.8, trim_atol=0.5)
    second = onnxruntime.load(request_for(cache_dir=tmp_path, weight_type="QInt8"))
    assert second.cache == "hit" and second.notes["onnx_dir"] == first.notes["onnx_dir"]
    with __import__("torch").inference_mode():
        a = first.model(input_ids=reference["ids"]).logits
        b = second.model(input_ids=reference["ids"]).logits
    assert (a == b).all()
    assert not list(tmp_path.joinpath("onnxruntime").glob(".staging-*"))


def test_onnxruntime_refuses_cuda():
    from pytest_quant.backends import onnxruntime

    with pytest.raises(ValueError, match="CPU"):
        onnxruntime.load(request_for(device="cuda:0"))

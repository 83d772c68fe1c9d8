"""backends.llama_cpp: the converted GGUF run by llama.cpp agrees with the fp32 transformers model, llama.cpp's
quantizer and the caches, the imatrix handed to it, llama.cpp's buffer sizes read from its log, and the plugin
gating a GGUF recipe against the unquantized GGUF (through pytester)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quant.backends.llama_cpp import buffers_text
from pytest_quant.backends.llama_cpp_model import parse_buffers

from .helpers import check_loaded, request_for

LLAMA_CPP = "pip install 'pytest-quant[gguf]'"


def test_llama_cpps_buffer_sizes_are_read_from_its_log():
    lines = ["load_tensors:   CPU_Mapped model buffer size =    14.03 MiB\n",
             "llama_kv_cache:        CPU KV buffer size =     6.00 MiB\n",
             "llama_context:        CPU  output buffer size =     0.03 MiB\n",
             "sched_reserve:        CPU compute buffer size =    17.50 MiB\n",
             "load_tensors:   CUDA0 model buffer size =     2.00 MiB\n", "print_info: n_ctx = 1024\n"]
    buffers = parse_buffers(lines)
    assert buffers == {"model": round(16.03 * 2**20), "KV": 6 * 2**20, "output": round(0.03 * 2**20),
                       "compute": round(17.5 * 2**20)}
    assert buffers_text(buffers) == "buffers model 16.0 + KV 6.0 + output 0.0 + compute 17.5 MiB"
    assert buffers_text({}) == "buffers not reported"


def test_an_imatrix_reaches_the_quantizer_as_mean_squared_activations(tmp_path: Path):
    gguf = pytest.importorskip("gguf", reason=LLAMA_CPP)
    pytest.importorskip("llama_cpp", reason=LLAMA_CPP)
    import numpy as np

    from pytest_quant.backends.llama_cpp import imatrix_entries

    path = tmp_path / "imatrix.gguf"
    writer = gguf.GGUFWriter(str(path), "imatrix")
    writer.add_tensor("blk.0.attn_q.weight.in_sum2", np.array([[2.0, 4.0, 6.0]], np.float32))
    writer.add_tensor("blk.0.attn_q.weight.counts", np.array([[2.0]], np.float32))
    writer.add_tensor("blk.0.ffn_up.weight.in_sum2", np.array([[1.0, 1.0]], np.float32))
    writer.add_tensor("blk.0.ffn_up.weight.counts", np.array([[0.0]], np.float32))  # never seen: 1, as llama.cpp
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    entries, _buffers = imatrix_entries(path)
    assert entries[0].name == b"blk.0.attn_q.weight" and entries[0].size == 3
    assert [entries[0].data[i] for i in range(3)] == [1.0, 2.0, 3.0]
    assert entries[1].name == b"blk.0.ffn_up.weight" and [entries[1].data[i] for i in range(2)] == [1.0, 1.0]
    assert entries[2].name is None  # the end of the array llama_model_quantize walks
    (tmp_path / "bad.gguf").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.gguf is not a GGUF importance matrix"):
        imatrix_entries(tmp_path / "bad.gguf")


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason=LLAMA_CPP)
    pytest.importorskip("gguf", reason=LLAMA_CPP)
    return tmp_path_factory.mktemp("gguf-cache")


def test_the_unquantized_gguf_in_llama_cpp_is_the_fp32_model(reference, gguf_cache):
    import torch

    from pytest_quant.backends import llama_cpp

    loaded = llama_cpp.load(request_for(cache_dir=gguf_cache))
    assert loaded.cache == "miss" and loaded.dtype == "F16" and loaded.kernel.startswith("llama.cpp F16, llama.cpp tokenizer")
    assert loaded.model.tokenizer.encode("It was a truth") == loaded.tokenizer("It was a truth")["input_ids"]
    check_loaded(loaded, reference, min_top1=0.97, trim_atol=1e-4)
    with torch.inference_mode():
        logits = loaded.model(input_ids=reference["ids"]).logits
    ours, theirs = logits.log_softmax(-1), reference["logits"].log_softmax(-1)
    kl = float((theirs.exp() * (theirs - ours)).sum(-1).mean())
    assert kl < 1e-5, f"KL(fp32 transformers || F16 llama.cpp) {kl}"  # F16 weights are the checkpoint's own
    assert set(loaded.notes["buffers"]) >= {"model", "KV", "compute"}
    again = llama_cpp.load(request_for(cache_dir=gguf_cache))
    assert again.cache == "hit" and again.notes["gguf"] == loaded.notes["gguf"]
    loaded.model.close()
    again.model.close()


def test_a_quantized_gguf_is_llama_cpps_quantizer_output_and_is_cached(reference, gguf_cache):
    from pytest_quant.backends import llama_cpp
    from pytest_quant.models.gguf_header import read_header

    first = llama_cpp.load(request_for(cache_dir=gguf_cache, type="q4_0"))
    assert first.cache == "miss" and first.quantize_seconds > 0 and first.dtype == "Q4_0"
    header = read_header(Path(first.notes["gguf"]))
    assert header.file_type_name == "Q4_0" and header.tensor_count == 56
    check_loaded(first, reference, min_top1=0.8, trim_atol=1e-4)
    throughput = first.model.measure_throughput(reference["ids"][0, :16].tolist(), decode_tokens=4, repeats=2,
                                                warmup_runs=1)
    assert throughput.decode_mode == "llama.cpp-t2" and throughput.decode_tokens_per_s > 0
    assert throughput.prompt_tokens == 16 and throughput.decode_tokens == 4 and throughput.repeats == 2
    with pytest.raises(ValueError, match="one sequence at a time; batch 2"):
        first.model.measure_throughput([1, 2], decode_tokens=1, repeats=1, warmup_runs=0, batch_size=2)
    second = llama_cpp.load(request_for(cache_dir=gguf_cache, type="Q4_0"))
    assert second.cache == "hit" and second.quantize_seconds == 0 and second.notes["gguf"] == first.notes["gguf"]
    first.model.close()
    second.model.close()


GATED = """
import pytest

@pytest.mark.perplexity_delta(max_rel=0.05)
@pytest.mark.kl_divergence(max_mean=0.05, min_top1=85)
def test_q(quant_model):
    assert quant_model.model is not None
"""


def test_a_gguf_recipe_is_gated_against_the_unquantized_gguf(pytester: pytest.Pytester, gguf_cache):
    pytester.makepyfile(GATED)
    report = pytester.path / "report.json"
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-eval-tokens", "1024", f"--quant-cache-dir={gguf_cache}",
                                "--quant-recipes", "reference,gguf-reference,gguf-q8_0", f"--quant-report={report}", "-v")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    rows = {row["recipe"]: row for row in json.loads(report.read_text())["results"]}
    q8, base, hf = rows["gguf-q8_0"], rows["gguf-reference"], rows["reference"]
    assert q8["kernel"].startswith("llama.cpp Q8_0, llama.cpp tokenizer")
    assert 0 < q8["mean_kl_nats"] < 0.005 and q8["top1_agreement_percent"] > 95
    # against the unquantized GGUF, not the Hugging Face model: its reference perplexity is gguf-reference's
    assert q8["reference_perplexity"] == pytest.approx(base["perplexity"], rel=1e-6)
    # the conversion's own effect: gguf-reference beside the Hugging Face reference, the same tokens
    assert base["perplexity"] == pytest.approx(hf["perplexity"], rel=1e-3)
    assert base["vram_resident_bytes"] < hf["vram_resident_bytes"]  # F16 file against fp32 parameters


def test_an_unknown_quant_type_is_a_usage_error_before_any_model_loads(pytester: pytest.Pytester):
    pytester.makefile(".toml", pyproject='[tool.pytest-quant.recipes.odd]\nbackend = "llama_cpp"\ntype = "Q4_K_X"\n')
    pytester.makepyfile(GATED)
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-recipes", "odd")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*recipes.odd*type = 'Q4_K_X' is not a type llama.cpp's quantizer accepts; "
                                 "accepted: Q1_0, *IQ4_XS*Q4_K_M*Q8_0, F16, BF16, F32"])
    assert "loading" not in result.stdout.str()


def test_an_importance_matrix_lets_llama_cpp_quantize_what_it_refuses_without_one(gguf_cache, tmp_path: Path):
    import gguf
    import numpy as np

    from pytest_quant.backends import llama_cpp
    from pytest_quant.models.gguf_header import read_header

    source, _key, _status, _s = llama_cpp.unquantized(Path(__file__).parents[2] / "pytest_quant/models/tiny", None,
                                                      gguf_cache)
    with pytest.raises(RuntimeError, match=r"llama_model_quantize\(model.gguf -> IQ2_XS\) failed"):
        llama_cpp.quantize(source, tmp_path / "no-imatrix.gguf", "IQ2_XS", None, 2)
    imatrix = tmp_path / "imatrix.gguf"  # what llama-imatrix writes: per weight, the sum of squared inputs and a count
    writer = gguf.GGUFWriter(str(imatrix), "imatrix")
    for tensor in gguf.GGUFReader(str(source)).tensors:
        if len(tensor.shape) == 2 and tensor.name != "token_embd.weight":
            writer.add_tensor(f"{tensor.name}.in_sum2", np.ones((1, int(tensor.shape[0])), np.float32))
            writer.add_tensor(f"{tensor.name}.counts", np.ones((1, 1), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = tmp_path / "iq2_xs.gguf"
    llama_cpp.quantize(source, out, "IQ2_XS", str(imatrix), 2)
    assert read_header(out).file_type_name == "IQ2_XS"


def test_a_gguf_file_is_a_model_only_gguf_recipes_run_on(pytester: pytest.Pytester, gguf_cache):
    import shutil

    from pytest_quant.backends import llama_cpp
    from pytest_quant.models import TINY_DIR

    source, key, _status, _s = llama_cpp.unquantized(TINY_DIR, None, gguf_cache)
    f16 = pytester.path / "tiny-f16.gguf"
    shutil.copyfile(source, f16)
    q4, _, _ = llama_cpp.quantized(source, key, "Q4_0", None, 2, gguf_cache)
    shutil.copyfile(q4, pytester.path / "tiny-q4.gguf")
    pytester.makepyfile(GATED)
    args = ("-p", "no:cacheprovider", "--quant-eval-tokens", "1024", f"--quant-cache-dir={gguf_cache}", "-rs", "-v")
    result = pytester.runpytest(*args, f"--quant-model={f16}", "--quant-recipes", "bnb-nf4,gguf-reference,gguf-q4_0")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["*test_q?tiny-f16-gguf-reference? PASSED*", "*test_q?tiny-f16-gguf-q4_0? PASSED*",
                                 "*SKIPPED*recipe bnb-nf4 needs a Hugging Face model folder; *tiny-f16.gguf is a GGUF "
                                 "file: only the gguf-* recipes run on it*"])
    # an already quantized file is gated as it is: no reference, so a relative limit cannot be checked
    quantized = pytester.runpytest(*args, f"--quant-model={pytester.path / 'tiny-q4.gguf'}")
    assert quantized.ret == pytest.ExitCode.TESTS_FAILED
    quantized.stdout.fnmatch_lines(["*tiny-q4*gguf-prequantized*llama.cpp Q4_0, llama.cpp tokenizer*FAIL*",
                                    "*perplexity_delta(max_rel=...) compares with the unquantized reference, and tiny-q4 "
                                    "is a pre-quantized checkpoint without one*"])
    assert "tiny-q4-gguf-q4_0" not in quantized.stdout.str()

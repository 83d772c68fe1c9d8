"""Decode timing: eager on CPU, a CUDA graph over a static cache on GPU; the paths decode the same tokens."""

from __future__ import annotations

import pytest

from pytest_quant.measure.decode_graph import capture_failure_reason
from pytest_quant.measure.throughput import greedy_tokens, measure_throughput

torch = pytest.importorskip("torch")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PROMPT = list(range(5, 37))  # 32 tokens


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    from pytest_quant.models import TINY_DIR

    return AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tiny_gpu():
    from transformers import AutoModelForCausalLM

    from pytest_quant.models import TINY_DIR

    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.bfloat16, device_map="cuda").eval()
    yield model
    del model


def test_eager_throughput_fields_on_cpu(tiny) -> None:
    t = measure_throughput(tiny, PROMPT, decode_tokens=4, repeats=2, warmup_runs=1, batch_size=2)
    assert (t.decode_mode, t.fallback_reason) == ("eager", None)  # CPU: eager by design, not a fallback
    assert (t.batch_size, t.prompt_tokens, t.decode_tokens, t.repeats, t.warmup_runs) == (2, 32, 4, 2, 1)
    assert t.decode_tokens_per_s > 0 and t.prefill_tokens_per_s > 0
    assert t.decode_tokens_per_s_per_sequence == pytest.approx(t.decode_tokens_per_s / 2)
    assert t.decode_cv_percent >= 0 and t.decode_spread_percent >= 0 and t.prefill_spread_percent >= 0


def test_cuda_graph_mode_on_cpu_raises_naming_the_device(tiny) -> None:
    if next(tiny.parameters()).is_cuda:
        pytest.skip("the model is on a GPU")
    with pytest.raises(ValueError, match="cuda-graph.*needs a CUDA device.*cpu"):
        measure_throughput(tiny, PROMPT, decode_tokens=2, repeats=1, warmup_runs=0, mode="cuda-graph")


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"mode": "graph"}, "mode"), ({"batch_size": 0}, "batch_size=0"), ({"repeats": 0}, "repeats=0"),
     ({"decode_tokens": 0}, "decode_tokens=0")],
)
def test_bad_arguments_raise_naming_them(tiny, kwargs, named) -> None:
    args = dict(decode_tokens=2, repeats=1, warmup_runs=0) | kwargs
    with pytest.raises(ValueError, match=named):
        measure_throughput(tiny, PROMPT, **args)


def test_static_cache_step_decodes_the_eager_tokens_on_cpu(tiny) -> None:
    eager = greedy_tokens(tiny, PROMPT, 12, "eager", batch_size=2)
    static = greedy_tokens(tiny, PROMPT, 12, "static", batch_size=2)
    assert len(eager) == 2 and len(eager[0]) == 13
    assert static == eager
    assert eager[0] == eager[1]


def test_capture_failure_reason_names_the_first_error() -> None:
    try:
        try:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        except RuntimeError:
            raise RuntimeError("operation failed due to a previous error during capture")
    except RuntimeError as error:
        reason = capture_failure_reason(error)
    assert reason == ("RuntimeError: operation not permitted when stream is capturing "
                      "(then RuntimeError: operation failed due to a previous error during capture)")


@gpu
def test_graph_decodes_the_same_tokens_as_the_static_and_eager_paths(tiny_gpu) -> None:
    graph = greedy_tokens(tiny_gpu, PROMPT, 32, "cuda-graph", batch_size=2)
    assert graph == greedy_tokens(tiny_gpu, PROMPT, 32, "static", batch_size=2)
    assert graph == greedy_tokens(tiny_gpu, PROMPT, 32, "eager", batch_size=2)


@gpu
def test_auto_mode_captures_on_gpu_and_gives_the_memory_back(tiny_gpu) -> None:
    from pytest_quant.measure.vram import release

    before = release("cuda")
    t = measure_throughput(tiny_gpu, PROMPT, decode_tokens=32, repeats=3, warmup_runs=1, batch_size=4)
    assert (t.decode_mode, t.fallback_reason, t.batch_size) == ("cuda-graph", None, 4)
    assert abs(release("cuda") - before) <= 2**20


@gpu
def test_llm_int8_falls_back_to_eager_by_itself_and_says_why() -> None:
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from pytest_quant.models import TINY_DIR

    model = AutoModelForCausalLM.from_pretrained(
        TINY_DIR, dtype=torch.float16, device_map="cuda", quantization_config=BitsAndBytesConfig(load_in_8bit=True)
    ).eval()
    t = measure_throughput(model, PROMPT, decode_tokens=8, repeats=2, warmup_runs=1)
    if t.decode_mode == "cuda-graph":
        pytest.skip("this bitsandbytes captures LLM.int8: nothing to fall back from")
    assert t.decode_mode == "eager" and t.fallback_reason and t.decode_tokens_per_s > 0
    with pytest.raises(RuntimeError, match="could not be captured"):
        measure_throughput(model, PROMPT, decode_tokens=8, repeats=1, warmup_runs=0, mode="cuda-graph")
    assert greedy_tokens(model, PROMPT, 4, "eager")  # the device still works after the failed captures

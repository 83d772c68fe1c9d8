"""Decode timing: eager on CPU, compiled or a CUDA graph over a static cache on GPU; the paths decode the same
tokens; a mode that cannot run falls back down the chain with its reason."""

from __future__ import annotations

import pytest

from pytest_quant.measure import decode_graph
from pytest_quant.measure.decode_check import greedy_tokens, step_agreement, teacher_forced_logits
from pytest_quant.measure.decode_graph import CompileError, capture_failure_reason
from pytest_quant.measure.throughput import measure_throughput, pinned_mode, resolve_mode

torch = pytest.importorskip("torch")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PROMPT = list(range(5, 37))  # 32 tokens
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


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
    assert (t.compile_s, t.compile_cache, t.requested_decode_mode) == (None, "", "eager")
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


@pytest.mark.parametrize(
    ("requested", "pinned", "device", "expected"),
    [("auto", None, CUDA, "compiled"), ("auto", None, CPU, "eager"), ("auto", "cuda-graph", CUDA, "cuda-graph"),
     ("compiled", "cuda-graph", CUDA, "cuda-graph"), ("eager", "cuda-graph", CUDA, "eager"),
     ("cuda-graph", "compiled", CUDA, "cuda-graph"), ("auto", "cuda-graph", CPU, "eager"),
     ("compiled", "cuda-graph", CPU, "eager"), ("compiled", None, CPU, "compiled"), ("auto", "eager", CUDA, "eager")],
)
def test_a_recipe_pin_only_moves_down_the_chain(requested, pinned, device, expected) -> None:
    assert pinned_mode(requested, pinned, device) == expected


def test_unknown_modes_are_named() -> None:
    with pytest.raises(ValueError, match="auto, compiled, cuda-graph, eager; got 'graph'"):
        resolve_mode("graph", CPU)
    with pytest.raises(ValueError, match="'fast'"):
        pinned_mode("auto", "fast", CPU)


def test_static_cache_step_decodes_the_eager_tokens_on_cpu(tiny) -> None:
    eager = greedy_tokens(tiny, PROMPT, 12, "eager", batch_size=2)
    static = greedy_tokens(tiny, PROMPT, 12, "static", batch_size=2)
    assert len(eager) == 2 and len(eager[0]) == 13
    assert static == eager
    assert eager[0] == eager[1]


def test_compiled_step_decodes_the_eager_tokens_on_cpu_and_a_second_compile_hits_the_cache(tiny, tmp_path) -> None:
    """float32 on CPU: the compiled step's greedy tokens are the eager step's, token for token. The compile
    cache lands in the directory given; the same step compiled again (after dynamo's reset) is a cache hit."""
    from pytest_quant.measure.compile_cache import use_directory

    use_directory(tmp_path / "inductor")
    compiled = greedy_tokens(tiny, PROMPT, 12, "compiled", batch_size=2)
    assert compiled == greedy_tokens(tiny, PROMPT, 12, "eager", batch_size=2)
    assert any((tmp_path / "inductor").rglob("*")), "inductor wrote nothing under the cache directory given"
    t = measure_throughput(tiny, PROMPT, decode_tokens=12, repeats=1, warmup_runs=0, batch_size=2, mode="compiled",
                           compile_cache_dir=tmp_path / "inductor")
    assert (t.decode_mode, t.fallback_reason, t.requested_decode_mode) == ("compiled", None, "compiled")
    assert t.compile_s > 0 and t.compile_cache == "hit"


def test_a_failed_compile_falls_back_with_its_reason_and_seconds(tiny, monkeypatch) -> None:
    def fail(self):
        raise CompileError("torch.compile failed: Unsupported: a graph break", 1.5)

    monkeypatch.setattr(decode_graph.StaticDecoder, "compile", fail)
    t = measure_throughput(tiny, PROMPT, decode_tokens=2, repeats=1, warmup_runs=0, mode="compiled")
    assert t.decode_mode == "eager" and t.requested_decode_mode == "compiled"
    assert t.fallback_reason == "compiled: torch.compile failed: Unsupported: a graph break"
    assert t.compile_s == 1.5
    with pytest.raises(RuntimeError, match="could not be compiled: torch.compile failed: Unsupported"):
        measure_throughput(tiny, PROMPT, decode_tokens=2, repeats=1, warmup_runs=0, mode="compiled", fallback=False)


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


def test_step_agreement_refuses_an_unknown_path(tiny) -> None:
    with pytest.raises(ValueError, match="'eager'"):
        step_agreement(tiny, PROMPT, 4, "eager")
    with pytest.raises(ValueError, match="'eager'"):
        teacher_forced_logits(tiny, PROMPT, [1, 2], "eager")


def test_teacher_forced_logits_are_the_full_forward_pass_logits(tiny) -> None:
    """Each static step fed the next token yields the logits one forward pass over prompt + tokens gives at
    that position (an independent computation: no cache, no step)."""
    tokens = [7, 300, 41, 2000, 5]
    logits, _ = teacher_forced_logits(tiny, PROMPT, tokens)
    with torch.inference_mode():
        full = tiny(torch.tensor([PROMPT + tokens])).logits[0, len(PROMPT):].float()
    assert logits.shape == (len(tokens), tiny.config.vocab_size)
    assert torch.allclose(logits, full, atol=1e-4), float((logits - full).abs().max())


def test_the_compiled_step_agrees_with_the_eager_step_on_cpu_in_float32(tiny, tmp_path) -> None:
    from pytest_quant.measure.compile_cache import use_directory

    use_directory(tmp_path / "inductor")
    agreement = step_agreement(tiny, PROMPT, 16, "compiled")
    assert agreement.first_token_equal and agreement.top1_agreement_percent == 100.0, agreement
    assert agreement.leading_equal_steps == 16 and agreement.max_logit_difference < 1e-3, agreement


@gpu
def test_graph_decodes_the_same_tokens_as_the_static_and_eager_paths(tiny_gpu) -> None:
    graph = greedy_tokens(tiny_gpu, PROMPT, 32, "cuda-graph", batch_size=2)
    assert graph == greedy_tokens(tiny_gpu, PROMPT, 32, "static", batch_size=2)
    assert graph == greedy_tokens(tiny_gpu, PROMPT, 32, "eager", batch_size=2)


@gpu
@pytest.mark.parametrize("mode", ["auto", "cuda-graph"])
def test_gpu_modes_run_as_asked_and_give_the_memory_back(tiny_gpu, mode, tmp_path) -> None:
    from pytest_quant.measure.vram import release

    before = release("cuda")
    t = measure_throughput(tiny_gpu, PROMPT, decode_tokens=32, repeats=3, warmup_runs=1, batch_size=4, mode=mode,
                           compile_cache_dir=tmp_path)
    expected = "compiled" if mode == "auto" else mode
    assert (t.decode_mode, t.fallback_reason, t.batch_size) == (expected, None, 4)
    assert (t.compile_s is not None) == (expected == "compiled")
    assert abs(release("cuda") - before) <= 2**20  # graphs, their pools and the compiled code are gone


@gpu
def test_llm_int8_falls_back_to_eager_by_itself_and_says_why(tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from pytest_quant.models import TINY_DIR

    model = AutoModelForCausalLM.from_pretrained(
        TINY_DIR, dtype=torch.float16, device_map="cuda", quantization_config=BitsAndBytesConfig(load_in_8bit=True)
    ).eval()
    t = measure_throughput(model, PROMPT, decode_tokens=8, repeats=2, warmup_runs=1, mode="cuda-graph")
    if t.decode_mode == "cuda-graph":
        pytest.skip("this bitsandbytes captures LLM.int8: nothing to fall back from")
    assert t.decode_mode == "eager" and t.fallback_reason.startswith("cuda-graph: ") and t.decode_tokens_per_s > 0
    with pytest.raises(RuntimeError, match="could not be captured"):
        measure_throughput(model, PROMPT, decode_tokens=8, repeats=1, warmup_runs=0, mode="cuda-graph", fallback=False)
    assert greedy_tokens(model, PROMPT, 4, "eager")  # the device still works after the failed captures


def test_a_decode_over_its_timing_budget_is_refused_with_the_estimate(tiny) -> None:
    from pytest_quant.measure.timing_budget import TimingBudgetExceeded, check_budget

    check_budget((0.5, 0.4), 4, 128, 8, budget_s=150.0, mode="eager")  # 8 x (0.5 + 128 x 0.1) = 106.4 s: fits
    with pytest.raises(TimingBudgetExceeded, match=r"about 106 s \(8 runs of a 0.50 s prefill and 128 steps at "
                                                   r"0.100 s a step\), over the budget of 100 s"):
        check_budget((0.5, 0.4), 4, 128, 8, budget_s=100.0, mode="eager")
    with pytest.raises(TimingBudgetExceeded, match="timing decode in eager mode would take about"):
        measure_throughput(tiny, PROMPT, decode_tokens=64, repeats=5, warmup_runs=3, budget_s=1e-6)
    t = measure_throughput(tiny, PROMPT, decode_tokens=4, repeats=1, warmup_runs=0, budget_s=600.0)
    assert t.decode_tokens_per_s > 0

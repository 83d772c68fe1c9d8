"""The CUDA paths, run on a GPU machine (they skip where torch sees no CUDA device)."""

from __future__ import annotations

import weakref

import pytest
import torch

from .conftest import FAST

RELEASE_SLACK_BYTES = 1 << 20  # what the plugin lets a release leave (a library's workspace)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_gpu_gate_measures_allocator_peak_nvml_and_releases(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest
import torch

@pytest.mark.quant_gpu
@pytest.mark.vram_budget("1 GiB")
@pytest.mark.tokens_per_second(min=1)
@pytest.mark.kl_divergence(max_mean=0.1)
def test_gpu(quant_model, quant_reference):
    assert quant_model.device == "cuda:0"
    assert next(quant_model.model.parameters()).is_cuda
    t = quant_model.throughput
    assert t.repeats == 5 and t.warmup_runs == 3 and t.decode_tokens_per_s > 0
    # LLM.int8 syncs with the host: neither its compiled nor its eager step can be captured
    assert t.decode_mode == ("eager" if quant_model.recipe.name == "bnb-int8" else "compiled"), t.fallback_reason
    assert t.compile_s > 0
    quant_model.quality  # the evaluation's peak is measured while it runs: the test body reads memory after it
    vram = quant_model.vram
    assert vram.load_peak_bytes >= vram.resident_bytes > 0
    assert vram.generate_peak_bytes >= vram.resident_bytes  # weights + KV cache + activations
    assert vram.eval_peak_bytes > vram.resident_bytes  # reported, never budgeted
    assert quant_reference.vram.resident_bytes > 0
"""
    )
    # the inner run's first matmul leaves cuBLAS's workspace (32 MiB on Hopper) in this process: make it now
    a = torch.ones(16, 16, device="cuda", dtype=torch.float16)
    (a @ a).sum().item()
    del a
    before = torch.cuda.memory_allocated()
    result = pytester.runpytest(*FAST, "-p", "no:cacheprovider", "--quant-gpu", "-W", "error:pytest-quant:pytest.PytestWarning",
                                "--quant-recipes", "reference,bnb-nf4,bnb-int8")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*pytest-quant summary*", "*tiny*bnb-nf4*cuda:0*Linear4bit*pass*"])
    # every model was released: nothing of theirs is left on the device (the H100 showed exactly 1 MiB
    # left, a library workspace, which is the plugin's own release slack)
    assert torch.cuda.memory_allocated() - before <= RELEASE_SLACK_BYTES


def test_gpu_reference_is_16_bit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import torch

def test_dtype(quant_model):
    assert next(quant_model.model.parameters()).dtype == torch.float16
"""
    )
    result = pytester.runpytest(*FAST, "-p", "no:cacheprovider", "--quant-gpu", "--quant-recipes", "reference")
    result.assert_outcomes(passed=1)


def test_bad_device_index_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--quant-gpu", "--quant-device", f"cuda:{torch.cuda.device_count()}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*only * CUDA device(s) found*"])


OOM_CONFTEST = """
import gc
import json

import pytest
import torch


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    '''Leave bnb-nf4 no room: the allocator may not grow past what it holds now, and the free space inside the
    segments it holds is taken first (a limit only above what is reserved leaves that space to the load).'''
    if fixturedef.argname != "quant_model" or request.getfixturevalue("quant_pair").recipe.name != "bnb-nf4":
        return (yield)
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    reserved = torch.cuda.memory_reserved()
    torch.cuda.set_per_process_memory_fraction(reserved / torch.cuda.get_device_properties(0).total_memory)
    fillers, free_inside_reserved = [], 0
    for size in (1 << 26, 1 << 23, 1 << 20, 1 << 16, 1 << 12):
        while True:
            try:
                fillers.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
            except torch.OutOfMemoryError:
                break
            free_inside_reserved += size
    try:
        return (yield)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        del fillers[:]
        gc.collect()
        torch.cuda.empty_cache()
        with open("returned.json", "w") as f:
            json.dump({"before": before, "after": torch.cuda.memory_allocated(), "reserved": reserved,
                       "free_inside_reserved": free_inside_reserved}, f)
"""

VRAM_TO_FILE = """
import json
import pathlib


def test_vram(quant_model):
    v = quant_model.vram
    pathlib.Path(f"vram-{quant_model.recipe.name}.json").write_text(
        json.dumps({"resident": v.resident_bytes, "load_peak": v.load_peak_bytes}))
"""


def test_out_of_memory_in_one_recipe_fails_it_and_leaves_the_next_measured_as_without_it(
        pytester: pytest.Pytester) -> None:
    """Issue 14: an OOM fails that recipe's tests with the OOM named; its memory comes back; the next recipe's
    figures equal those of a run without the failing recipe."""
    import json

    pytester.makeconftest(OOM_CONFTEST)
    pytester.makepyfile(test_oom=VRAM_TO_FILE)
    args = (*FAST, "-p", "no:cacheprovider", "--quant-gpu")
    try:
        result = pytester.runpytest(*args, "--quant-recipes", "reference,bnb-nf4,bnb-int8")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_vram[[]tiny-bnb-nf4[]]*", "*OutOfMemoryError*CUDA out of memory*"])
    returned = json.loads((pytester.path / "returned.json").read_text())
    print(f"OOM set-up: {returned}")  # free_inside_reserved: what a limit of reserved + 2 MiB left to the load
    assert returned["after"] - returned["before"] <= RELEASE_SLACK_BYTES
    with_oom = json.loads((pytester.path / "vram-bnb-int8.json").read_text())
    result = pytester.runpytest(*args, "--quant-recipes", "reference,bnb-int8")
    result.assert_outcomes(passed=2)
    without = json.loads((pytester.path / "vram-bnb-int8.json").read_text())
    assert with_oom["resident"] == without["resident"]
    assert abs(with_oom["load_peak"] - without["load_peak"]) <= RELEASE_SLACK_BYTES


def test_a_model_kept_in_a_global_is_named_by_the_release_warning(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leak="""
KEPT = None


def test_keep(quant_model):
    global KEPT
    KEPT = quant_model.model
""")
    result = pytester.runpytest(*FAST, "-p", "no:cacheprovider", "--quant-gpu", "--quant-recipes", "reference,bnb-nf4")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*GPU memory still allocated after releasing tiny-reference; the model is still "
                                 "held by test_leak.KEPT, and later VRAM figures may be inflated*"])


def test_compiled_step_agrees_with_the_eager_step_on_the_embedded_model() -> None:
    """On the GPU, fed the same tokens: in float32 the compiled and captured step picks the eager step's greedy
    token at >= 99% of the steps (its first tokens equal, free-running); in float16 (the embedded model's dtype on
    a GPU) the compiled step's logits are no further from float32's than twice the eager float16 step's own
    rounding error, so a flipped token there is a near-tie float16 itself decides, not a compile defect.

    On the H200 (2026-12-01): float32 100% of 256 steps, logits within 5.7e-6; float16 98.83% (3 flips, the first
    after 11 steps; 92.97% in bfloat16), compiled vs eager float16 logits within 0.0156 (2 float16 ulps at the
    logits' size) while eager float16 is 0.0114 from float32. An earlier form of this test asserted 99% in float16
    and |compiled - eager| <= |eager float16 - float32|; both failed. This form has not run on a GPU yet."""
    from transformers import AutoModelForCausalLM

    from pytest_quant.measure.decode_check import greedy_tokens, step_agreement, teacher_forced_logits
    from pytest_quant.measure.vram import release
    from pytest_quant.models import TINY_DIR

    before = release("cuda")
    prompt = list(range(5, 37))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 as float32: no TensorFloat-32 rounding on either side
    try:
        model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32, device_map="cuda").eval()
        exact = step_agreement(model, prompt, 256, "compiled")
        print("float32", exact)
        assert exact.first_token_equal and exact.leading_equal_steps >= 4, exact
        assert exact.top1_agreement_percent >= 99.0, exact
        assert greedy_tokens(model, prompt, 4, "compiled") == greedy_tokens(model, prompt, 4, "static")
        half = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float16, device_map="cuda").eval()
        agreement = step_agreement(half, prompt, 256, "compiled")
        tokens = greedy_tokens(half, prompt, 256, "static")[0][:-1]
        truth = teacher_forced_logits(model, prompt, tokens)[0]
        eager_error = float((teacher_forced_logits(half, prompt, tokens)[0] - truth).abs().max())
        compiled_error = float((teacher_forced_logits(half, prompt, tokens, "compiled")[0] - truth).abs().max())
        print("float16", agreement, f"max |logit - float32|: eager {eager_error:.4f}, compiled {compiled_error:.4f}")
        assert agreement.first_token_equal, agreement
        assert compiled_error <= 2 * eager_error, (agreement, eager_error, compiled_error)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    del model, half
    assert release("cuda") - before <= RELEASE_SLACK_BYTES  # the compiled graphs and their pools are gone


SHAPE_1B = dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True)  # benchmarks/bench_scale.py


def _gpu_recipes() -> list[str]:
    from pytest_quant.backends import DEFAULT_REGISTRY
    from pytest_quant.recipes import BUILTIN_RECIPES, runs_on

    return [n for n, r in BUILTIN_RECIPES.items() if r.default and runs_on(r, DEFAULT_REGISTRY, "cuda:0")]


@pytest.fixture(scope="module")
def model_1b(tmp_path_factory):
    """A Llama of the 1.1B shape with random weights, built on the GPU and saved with the embedded tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pytest_quant.measure.vram import release
    from pytest_quant.models import TINY_DIR

    folder = tmp_path_factory.mktemp("llama-1b")
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    config = LlamaConfig(**SHAPE_1B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         max_position_embeddings=2048)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    release("cuda:0")
    return folder


@pytest.mark.slow  # minutes: GPTQ, AWQ and modelopt quantize or calibrate a 1.1B model
@pytest.mark.parametrize("name", _gpu_recipes())
def test_every_gpu_recipe_holds_its_model_resident_and_gives_it_back_at_the_1b_shape(name, model_1b,
                                                                                     tmp_path_factory) -> None:
    """Issue 19: resident VRAM from the allocator, > 0 and at least the model's own tensors on the device
    (modelopt-fp8 read 0 B), and the allocator back within 1 MiB after the release (GPTQ left 675 MiB)."""
    from pytest_quant.backends import DEFAULT_REGISTRY, LoadRequest
    from pytest_quant.measure.throughput import measure_throughput, pinned_mode
    from pytest_quant.measure.vram import GENERATE, VramTracker, referrer_chains, release
    from pytest_quant.models import embedded_calibration_text
    from pytest_quant.recipes import BUILTIN_RECIPES

    recipe = BUILTIN_RECIPES[name]
    backend = DEFAULT_REGISTRY[recipe.backend]
    if backend.missing():
        pytest.skip(f"{', '.join(backend.missing())} not installed")
    before = release("cuda:0")
    trackers: list = []
    loaded = backend.load_model(LoadRequest(
        model_path=model_1b, recipe=recipe, device="cuda:0", cache_dir=tmp_path_factory.getbasetemp() / "qcache",
        calibration_text=embedded_calibration_text(), before_load=lambda: trackers.append(VramTracker("cuda:0"))))
    tracker = trackers.pop()
    tracker.loaded()
    with tracker.phase(GENERATE):
        t = measure_throughput(loaded.model, list(range(5, 69)), 16, 1, 0,
                               mode=pinned_mode("cuda-graph", recipe.decode_mode, torch.device("cuda:0")))
    vram = tracker.read(loaded.model)
    print(f"{name}: resident {vram.resident_bytes}, model tensors {vram.model_device_bytes}, load peak "
          f"{vram.load_peak_bytes}, decode {t.decode_tokens_per_s:.1f} tok/s ({t.decode_mode})")
    assert vram.resident_bytes >= vram.model_device_bytes > 0
    assert vram.generate_peak_bytes >= vram.resident_bytes
    model = weakref.ref(loaded.model)
    del loaded, tracker, vram
    left = release("cuda:0") - before
    held = referrer_chains(model()) if model() is not None else ["the model itself was freed"]
    assert left <= RELEASE_SLACK_BYTES, f"{name}: {left / 2**20:.2f} MiB still allocated after the release; " + \
        "\n".join(held)

"""The GPTQModel backend, for real on CPU with the embedded model: quantize, cache, reload, kernels.

One GPTQ quantization (32 windows of 256 tokens) is shared by the module; the corrupt-entry test and the
AWQ test quantize once more each.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_quant import backends, qcache
from pytest_quant import calibration as calib
from pytest_quant.models import TINY_DIR, embedded_calibration_text, embedded_eval_text
from pytest_quant.recipes import BUILTIN_RECIPES, Recipe, _frozen

pytestmark = pytest.mark.skipif(
    bool(backends.missing_requirements("gptqmodel")), reason="gptqmodel/optimum not installed"
)

torch = pytest.importorskip("torch")
g = pytest.importorskip("pytest_quant.backends.gptqmodel")
from pytest_quant.backends import checkpoint, gptqmodel_spec as spec_mod, prequantized, roundtrip  # noqa: E402

SMALL = {"calibration_samples": 32, "calibration_seq_len": 256}


def recipe(name: str, **overrides) -> Recipe:
    base = BUILTIN_RECIPES[name]
    return Recipe(base.name, base.backend, _frozen({**base.options, **SMALL, **overrides}), base.description)


def load(model_path: Path, rec: Recipe, cache_dir: Path | None) -> backends.Loaded:
    return backends.load(backends.LoadRequest(model_path, rec, "cpu", cache_dir, embedded_calibration_text()))


def logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits.float()


def nll(model, ids) -> float:
    with torch.inference_mode():
        return float(model(ids, labels=ids).loss)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quant-cache")


@pytest.fixture(scope="module")
def gptq_first(cache_dir):
    return load(TINY_DIR, recipe("gptq-w4g128"), cache_dir)


@pytest.fixture(scope="module")
def gptq_second(gptq_first, cache_dir):
    return load(TINY_DIR, recipe("gptq-w4g128"), cache_dir)


@pytest.fixture(scope="module")
def prequantized_entry(gptq_first, gptq_second):
    """The cache entry the child published, loaded by the parent as a pre-quantized checkpoint (once for the
    module: the two tests that read it load the same folder)."""
    assert gptq_second.notes["checkpoint"] == gptq_first.notes["checkpoint"]
    return backends.load(backends.LoadRequest(Path(gptq_first.notes["checkpoint"]), prequantized.PREQUANTIZED, "cpu"))


@pytest.fixture(scope="module")
def eval_ids(gptq_first):
    text = embedded_eval_text().read_text(encoding="utf-8")[:20_000]
    ids = gptq_first.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0, :512]
    return ids.view(2, 256)


@pytest.fixture(scope="module")
def reference(eval_ids):
    return backends.load(backends.LoadRequest(TINY_DIR, BUILTIN_RECIPES["reference"], "cpu"))


# -- cache ------------------------------------------------------------------------------------------------

def test_first_load_quantizes_and_the_second_hits_the_cache(gptq_first, gptq_second, eval_ids) -> None:
    assert gptq_first.cache == "miss" and gptq_first.quantize_seconds > 0
    assert gptq_second.cache == "hit" and gptq_second.quantize_seconds == 0.0
    assert gptq_second.notes["checkpoint"] == gptq_first.notes["checkpoint"]
    assert gptq_first.notes["calibration_samples"] == 32 and gptq_first.notes["calibration_seq_len"] == 256
    assert gptq_second.notes["quantize_seconds_when_cached"] == pytest.approx(gptq_first.quantize_seconds)
    assert torch.equal(logits(gptq_first.model, eval_ids), logits(gptq_second.model, eval_ids))


def test_quantized_model_stays_close_to_the_reference(gptq_first, reference, eval_ids) -> None:
    ppl_ref, ppl_q = math.exp(nll(reference.model, eval_ids)), math.exp(nll(gptq_first.model, eval_ids))
    assert 0.97 < ppl_q / ppl_ref < 1.05, (ppl_ref, ppl_q)
    # ...and it is quantized: the logits moved.
    assert (logits(gptq_first.model, eval_ids) - logits(reference.model, eval_ids)).abs().max() > 0.01


@pytest.mark.slow  # quantizes a second time: minutes on 2 cores
def test_corrupt_entry_is_detected_and_rebuilt(gptq_first, cache_dir, eval_ids, tmp_path: Path) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    entry = copy / g.CACHE_SUBDIR / gptq_first.notes["cache_key"]
    with open(entry / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    rebuilt = load(TINY_DIR, recipe("gptq-w4g128"), copy)
    assert rebuilt.cache == "rebuilt" and rebuilt.quantize_seconds > 0
    assert "model.safetensors has 1000 bytes" in rebuilt.notes["cache_problem"]
    assert Path(rebuilt.notes["checkpoint"]) == entry
    # Quantizing on CPU is deterministic: the rebuilt entry gives the same logits.
    assert torch.equal(logits(rebuilt.model, eval_ids), logits(gptq_first.model, eval_ids))
    assert load(TINY_DIR, recipe("gptq-w4g128"), copy).cache == "hit"


def key_for(rec: Recipe, tmp_path: Path, source: Path | None = None) -> str:
    spec = spec_mod.spec_from_recipe(rec, "cpu")
    tokenizer = backends.load_tokenizer(TINY_DIR)
    request = backends.LoadRequest(TINY_DIR, rec, "cpu", tmp_path, source or embedded_calibration_text())
    cal = calib.build(g.calibration_source(spec, request), tokenizer, spec.samples, spec.seq_len)
    return qcache.cache_key(g.cache_inputs(TINY_DIR, spec, cal, "cpu", memo_dir=tmp_path))


def test_cache_key_follows_recipe_and_calibration_but_not_kernel(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(json.dumps({"question": f"Question {i} about Bath?", "answer": f"Answer {i}: the Pump Room. " * 12})
                  for i in range(40)),
        encoding="utf-8",
    )
    base = key_for(recipe("gptq-w4g128"), tmp_path)
    assert base == key_for(recipe("gptq-w4g128"), tmp_path)
    assert base == key_for(recipe("gptq-w4g128", kernel="gptq_triton"), tmp_path)  # how it runs, not what it is
    others = [
        key_for(recipe("gptq-w8g128"), tmp_path),
        key_for(recipe("gptq-w4g128", group_size=64), tmp_path),
        key_for(recipe("gptq-w4g128", desc_act=True), tmp_path),
        key_for(recipe("gptq-w4g128", calibration_samples=16), tmp_path),
        key_for(recipe("gptq-w4g128", calibration_seq_len=128), tmp_path),
        key_for(recipe("gptq-w4g128", calibration=str(pairs)), tmp_path),  # the recipe's own file wins
        key_for(recipe("gptq-w4g128"), tmp_path, source=pairs),  # the session's file
        key_for(recipe("awq-w4g128"), tmp_path),
    ]
    assert base not in others and len(set(others)) == len(others) - 1  # the recipe's file = the session's
    assert others[5] == others[6]


# -- kernels ----------------------------------------------------------------------------------------------

def test_the_torch_kernel_runs_on_cpu_and_is_recorded(gptq_first) -> None:
    assert gptq_first.kernel == "TorchLinear"
    assert gptq_first.notes["kernel_requested"] == "gptq_torch"
    layers = [m for m in gptq_first.model.modules() if type(m).__name__ == "TorchLinear"]
    assert len(layers) == 6 * 7  # q, k, v, o, gate, up, down in each of the six layers
    assert type(gptq_first.model.lm_head).__name__ == "Linear"  # the tied head stays unquantized
    assert gptq_first.dtype == "float32"


def test_kernel_names_resolve_and_defaults_avoid_jit_builds(monkeypatch) -> None:
    assert spec_mod.resolve_kernel("gptq", "torch", "cpu", 4, "r") == "gptq_torch"
    assert spec_mod.resolve_kernel("gptq", "GPTQ_MARLIN", "cuda:0", 4, "r") == "gptq_marlin"
    assert spec_mod.resolve_kernel("awq", "gemm_triton", "cuda:0", 4, "r") == "awq_gemm_triton"
    with pytest.raises(ValueError, match=r"recipe x: kernel 'nope' is not a gptq kernel of GPTQModel; known kernels: .*gptq_torch"):
        spec_mod.resolve_kernel("gptq", "nope", "cpu", 4, "recipe x")
    assert spec_mod.default_kernel("gptq", "cpu", 4) == "gptq_torch" and spec_mod.default_kernel("awq", "cpu", 4) == "awq_torch"
    monkeypatch.setattr(spec_mod.importlib.util, "find_spec", lambda name: object())
    assert spec_mod.default_kernel("gptq", "cuda:0", 8) == "gptq_triton"
    assert spec_mod.default_kernel("awq", "cuda:0", 4) == "awq_gemm_triton"
    assert spec_mod.default_kernel("awq", "cuda:0", 8) == "awq_torch"  # the Triton AWQ kernel is 4-bit only
    monkeypatch.setattr(spec_mod.importlib.util, "find_spec", lambda name: None)
    assert spec_mod.default_kernel("gptq", "cuda:0", 4) == "gptq_torch"


def test_recipe_fields_map_onto_gptqmodel_or_are_refused() -> None:
    awq = spec_mod.spec_from_recipe(recipe("awq-w4g128"), "cpu")
    assert awq.quantize == {"method": "awq", "bits": 4, "group_size": 128, "sym": False, "format": "gemm",
                            "pack_impl": "original"}
    gptq = spec_mod.spec_from_recipe(recipe("gptq-w8g128", kernel="torch", batch_size=4), "cuda:0")
    assert gptq.kernel == "gptq_torch" and gptq.batch_size == 4 and gptq.quantize["pack_impl"] == "auto"
    with pytest.raises(ValueError, match=r"recipe gptq-w4g128: field 'dataset' is not supported .*'calibration'"):
        spec_mod.spec_from_recipe(recipe("gptq-w4g128", dataset="c4"), "cpu")
    with pytest.raises(ValueError, match="kernel 'gptq_torch' and backend 'gptq_triton' disagree"):
        spec_mod.spec_from_recipe(recipe("gptq-w4g128", kernel="gptq_torch", backend="gptq_triton"), "cpu")
    with pytest.raises(ValueError, match="calibration_samples must be a positive integer, got 0"):
        spec_mod.spec_from_recipe(recipe("gptq-w4g128", calibration_samples=0), "cpu")


def test_environment_lets_gptqmodel_start_on_two_cores(monkeypatch) -> None:
    for name in ("GPTQMODEL_CPU_WORKERS", "CUDA_DEVICE_ORDER", "PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(spec_mod.os, "cpu_count", lambda: 2)
    spec_mod.prepare_environment()
    assert spec_mod.os.environ["GPTQMODEL_CPU_WORKERS"] == "2"
    assert spec_mod.os.environ["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"
    assert spec_mod.os.environ["PYTORCH_ALLOC_CONF"] == "expandable_segments:False"
    monkeypatch.delenv("GPTQMODEL_CPU_WORKERS")
    monkeypatch.delenv("PYTORCH_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64")
    monkeypatch.setattr(spec_mod.os, "cpu_count", lambda: 128)
    spec_mod.prepare_environment()
    assert spec_mod.os.environ["GPTQMODEL_CPU_WORKERS"] == "12"  # GPTQModel's own cap
    assert spec_mod.os.environ["PYTORCH_ALLOC_CONF"] == "max_split_size_mb:64"  # the user's allocator settings kept
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", "3")
    spec_mod.prepare_environment()
    assert spec_mod.os.environ["GPTQMODEL_CPU_WORKERS"] == "3"


# -- pre-quantized checkpoints ----------------------------------------------------------------------------

def test_a_cache_entry_loads_as_a_prequantized_checkpoint(gptq_second, prequantized_entry, eval_ids) -> None:
    entry = Path(gptq_second.notes["checkpoint"])
    assert checkpoint.quantization_method(entry) == "gptq"
    pre = prequantized_entry
    assert pre.kernel == "TorchLinear" and pre.cache == "" and pre.quantize_seconds == 0.0
    assert pre.notes["method"] == "gptq" and pre.notes["kernel_requested"] == "gptq_torch"
    assert torch.equal(logits(pre.model, eval_ids), logits(gptq_second.model, eval_ids))


@pytest.mark.skipif(bool(backends.missing_requirements("bitsandbytes")), reason="bitsandbytes not installed")
def test_a_saved_bitsandbytes_model_loads_as_prequantized(tmp_path: Path) -> None:
    nf4 = backends.load(backends.LoadRequest(TINY_DIR, BUILTIN_RECIPES["bnb-nf4"], "cpu"))
    nf4.model.save_pretrained(tmp_path)
    nf4.tokenizer.save_pretrained(tmp_path)
    assert checkpoint.quantization_method(tmp_path) == "bitsandbytes"
    pre = backends.load(backends.LoadRequest(tmp_path, prequantized.PREQUANTIZED, "cpu"))
    assert pre.kernel == "Linear4bit" and pre.notes["method"] == "bitsandbytes"
    ids = torch.arange(1, 65)[None]
    assert torch.equal(logits(pre.model, ids), logits(nf4.model, ids))


def test_quantization_method_reads_only_the_config(tmp_path: Path) -> None:
    assert checkpoint.quantization_method(TINY_DIR) is None
    cases = {
        "gptq": {"quant_method": "gptq", "bits": 4},
        "awq": {"quant_method": "awq", "bits": 4},
        "bitsandbytes": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
    }
    for method, qc in cases.items():
        folder = tmp_path / method
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qc}))
        assert checkpoint.quantization_method(folder) == method
    with pytest.raises(ValueError, match="cannot read the model config"):
        checkpoint.quantization_method(tmp_path)
    code = (
        "import sys; from pytest_quant.backends.checkpoint import quantization_method; "
        f"print(quantization_method({str(tmp_path / 'awq')!r}), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["awq", "False"]


def test_prequantized_refuses_an_unquantized_model() -> None:
    with pytest.raises(ValueError, match="config.json has no quantization_config; recipe 'prequantized' needs"):
        prequantized.load(backends.LoadRequest(TINY_DIR, prequantized.PREQUANTIZED, "cpu"))


# -- checks of the saved checkpoints ------------------------------------------------------------------------

def test_transformers_runs_the_gptq_checkpoint_as_gptqmodel_does(gptq_second) -> None:
    agreement = roundtrip.loader_agreement(Path(gptq_second.notes["checkpoint"]), "cpu")
    assert agreement.ok and agreement.top1_agreement >= 0.95, agreement
    assert agreement.kernel_before == agreement.kernel_after == "TorchLinear"


@pytest.mark.xfail(
    strict=True,
    reason="transformers 5.23 + optimum 2.3: save_pretrained of a loaded GPTQ model writes the in-memory v2 zero "
    "points under checkpoint_format 'gptq' (v1), so the reloaded model is off by one zero step",
)
def test_gptq_save_pretrained_round_trip(gptq_second, tmp_path: Path) -> None:
    result = roundtrip.roundtrip_check(gptq_second, tmp_path / "resaved", "cpu")
    assert result.ok, result


@pytest.mark.slow  # AWQ on 2 CPU cores takes many minutes; the main command's cold gate quantizes it end to end
def test_awq_quantizes_without_a_cache_and_round_trips(reference, eval_ids, tmp_path: Path) -> None:
    awq = load(TINY_DIR, recipe("awq-w4g128", calibration_samples=8, calibration_seq_len=128), None)
    assert awq.cache == "" and awq.quantize_seconds > 0 and "cache_key" not in awq.notes
    assert awq.kernel == "AwqTorchLinear" and awq.notes["kernel_requested"] == "awq_torch"
    assert checkpoint.quantization_method(Path(awq.notes["checkpoint"])) == "awq"
    ppl_ref, ppl_q = math.exp(nll(reference.model, eval_ids)), math.exp(nll(awq.model, eval_ids))
    assert 0.97 < ppl_q / ppl_ref < 1.10, (ppl_ref, ppl_q)
    result = roundtrip.roundtrip_check(awq, tmp_path / "resaved", "cpu")
    assert result.ok and result.top1_agreement == 1.0 and result.kernel_after == "AwqTorchLinear", result
    assert roundtrip.loader_agreement(Path(awq.notes["checkpoint"]), "cpu").ok


# -- quantizing in a child process --------------------------------------------------------------------------

def test_quantization_runs_in_a_seeded_child_and_publishes_a_loadable_entry(gptq_first, prequantized_entry, cache_dir,
                                                                            eval_ids) -> None:
    import os

    from pytest_quant.backends import quantize_child

    child = gptq_first.notes["quantize_child"]
    assert child["seed"] == quantize_child.SEED and child["deterministic_algorithms"] is True
    assert child["torch_threads"] == quantize_child.threads_for() and child["pythonhashseed"] == "0"
    assert child["cublas_workspace_config"] == os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    entry = Path(gptq_first.notes["checkpoint"])
    manifest = json.loads((entry / qcache.MANIFEST).read_text())
    assert manifest["info"]["quantize_child"] == child  # the key's inputs are as before: entries stay valid
    assert set(manifest["inputs"]) == {"model", "quantize", "batch_size", "calibration", "device", "versions"}
    assert not list(entry.parent.glob(".staging-*"))  # published, nothing left half-built
    # The parent loaded the artifact the child saved.
    assert torch.equal(logits(prequantized_entry.model, eval_ids), logits(gptq_first.model, eval_ids))


def test_the_child_gets_the_environment_and_determinism_settings(monkeypatch) -> None:
    import os

    from pytest_quant.backends import quantize_child

    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", "5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    env = quantize_child.child_environment()
    assert env["GPTQMODEL_CPU_WORKERS"] == "5" and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and env["PYTHONHASHSEED"] == "0"
    assert str(Path(quantize_child.__file__).resolve().parents[2]) in env["PYTHONPATH"].split(os.pathsep)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert quantize_child.child_environment()["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's setting kept
    monkeypatch.delenv(quantize_child.THREADS_ENV, raising=False)
    assert [quantize_child.threads_for(n) for n in (1, 2, 16)] == [1, 2, 2]
    monkeypatch.setenv(quantize_child.THREADS_ENV, "3")
    assert quantize_child.threads_for(16) == 3


def test_log_tail_keeps_the_last_lines_and_collapses_progress_bars(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    log.write_bytes(b"".join(f"line {i}\n".encode() for i in range(50)) + b"bar 10%\rbar 50%\rbar 100%\n\n")
    tail = g.log_tail(log, 3)
    assert tail == ["line 48", "line 49", "bar 100%"]
    assert g.log_tail(tmp_path / "absent.log")[0].startswith("(no output")


def test_a_failing_child_names_the_recipe_and_shows_its_last_lines(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(TINY_DIR, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file" * 100)
    with pytest.raises(g.QuantizeChildError) as info:
        load(broken, recipe("gptq-w4g128"), tmp_path / "cache")
    message = str(info.value)
    assert message.startswith("recipe gptq-w4g128: quantizing ")
    assert "in a child process failed (exit code 1); its last" in message
    assert "Traceback" in message or "Error" in message.splitlines()[-1], message
    assert len(message.splitlines()) <= 1 + g.TAIL_LINES
    root = tmp_path / "cache" / g.CACHE_SUBDIR
    assert not [p for p in root.iterdir() if not p.name.startswith(".") and p.name != qcache.HASH_MEMO]  # nothing published
    assert not list(root.glob(".staging-*"))

"""backends.compressed_tensors: recipe fields, the scheme label, and checkpoints in the compressed-tensors format
(one made by the plugin, one written here by hand from the format's description) gated as ``prequantized``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_quant import backends
from pytest_quant.backends import compressed_tensors as ct
from pytest_quant.models import TINY_DIR

from .helpers import TOKENS

FAST = ("--quant-eval-tokens", "1024", "-p", "no:cacheprovider")
# config.json's quantization_config of an int4 group-128 checkpoint as llm-compressor writes it (the keys vLLM reads)
W4A16_CONFIG = {
    "quant_method": "compressed-tensors",
    "format": "pack-quantized",
    "quantization_status": "compressed",
    "ignore": ["lm_head"],
    "config_groups": {"group_0": {
        "targets": ["Linear"], "format": "pack-quantized", "input_activations": None, "output_activations": None,
        "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128,
                    "dynamic": False},
    }},
}


def test_importing_the_backend_imports_no_library() -> None:
    import subprocess
    import sys

    code = ("import sys, pytest_quant.backends.compressed_tensors as m; m.validate; "
            "print([n for n in ('torch', 'compressed_tensors', 'transformers') if n in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"

@pytest.mark.parametrize("settings, words", [
    ({"scheme": "W3A16"}, ["scheme", "W3A16", "W4A16", "FP8_DYNAMIC"]),
    ({}, ["scheme", "None"]),
    ({"scheme": "W4A16", "group_size": 0}, ["group_size", "0", "positive"]),
    ({"scheme": "W8A8", "group_size": 64}, ["group_size", "W8A8"]),
    ({"scheme": "W4A16", "ignore": "lm_head"}, ["ignore", "lm_head", "list"]),
])
def test_validate_names_the_field_the_value_and_what_is_accepted(settings, words) -> None:
    with pytest.raises(ValueError) as info:
        ct.validate(settings)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_fp8_dynamic_needs_cuda() -> None:
    with pytest.raises(ValueError, match="FP8_DYNAMIC.*needs CUDA.*'cpu'"):
        ct.check_device("FP8_DYNAMIC", "cpu")
    ct.check_device("W8A8", "cpu")


def test_the_scheme_label_names_bits_grouping_activations_and_format() -> None:
    assert ct.scheme_label(W4A16_CONFIG) == "compressed-tensors W4A16 int g128 sym (pack-quantized)"
    w8a8 = {"config_groups": {"g": {"format": "int-quantized",
                                    "weights": {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True},
                                    "input_activations": {"num_bits": 8, "type": "int", "strategy": "token",
                                                          "dynamic": True}}}}
    assert ct.scheme_label(w8a8) == ("compressed-tensors W8A8 int per-channel sym, dynamic per-token activations "
                                     "(int-quantized)")


def test_a_compressed_tensors_folder_needs_compressed_tensors_to_load(tmp_path: Path) -> None:
    from pytest_quant.backends.checkpoint import requirements

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"quantization_config": W4A16_CONFIG}))
    assert requirements(folder) == ("compressed_tensors",)


def test_a_recipe_whose_library_is_missing_skips_naming_the_extra(run_quant, monkeypatch) -> None:
    monkeypatch.setattr(backends, "is_installed", lambda name: name != "compressed_tensors")
    result = run_quant("def test_q(quant_model):\n    pass\n", "--quant-recipes=ct-w4a16-g128", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*compressed_tensors not installed*pip install 'pytest-quant[[]ct[]]'*"])


# -- checkpoints --------------------------------------------------------------------------------------------

def write_by_hand(folder: Path) -> None:
    """An int4 group-128 compressed-tensors checkpoint of the embedded model written from the format's description,
    without compressed-tensors: per quantized linear ``weight_packed`` (int32, eight 4-bit values a word along the
    input dimension, the first in the lowest bits, each stored as q + 8), ``weight_scale`` (one per 128 inputs) and
    ``weight_shape``; symmetric round to nearest, q = round(w / s) in [-8, 7] with s = max|w| / 7.5."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {}
    for name, tensor in load_file(TINY_DIR / "model.safetensors").items():
        tensor = tensor.float()
        if not (name.endswith("_proj.weight") and tensor.ndim == 2):
            tensors[name] = tensor
            continue
        out_features, in_features = tensor.shape
        groups = tensor.reshape(out_features, in_features // 128, 128)
        scale = groups.abs().amax(-1) / 7.5
        q = torch.clamp(torch.round(groups / scale[..., None]), -8, 7).reshape(out_features, in_features)
        nibbles = (q.to(torch.int64) + 8).reshape(out_features, in_features // 8, 8)
        words = sum(nibbles[..., i] << (4 * i) for i in range(8))
        words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the same bits as int32
        stem = name.removesuffix(".weight")
        tensors[f"{stem}.weight_packed"] = words
        tensors[f"{stem}.weight_scale"] = scale
        tensors[f"{stem}.weight_shape"] = torch.tensor([out_features, in_features], dtype=torch.int64)
    folder.mkdir(parents=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((TINY_DIR / "config.json").read_text())
    config["dtype"] = "float32"
    config["quantization_config"] = W4A16_CONFIG
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(TINY_DIR / name, folder / name)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    made = root / "tiny-ct-made"
    ct.quantize_to_folder(TINY_DIR, {"scheme": "W4A16"}, "cpu", made)
    write_by_hand(root / "tiny-ct-by-hand")
    return made, root / "tiny-ct-by-hand"


def test_the_plugins_folder_and_the_hand_written_one_are_the_same_quantization(folders, reference) -> None:
    import torch

    made, by_hand = (ct.load_folder(folder, "cpu")[0] for folder in folders)
    assert json.loads((folders[0] / "config.json").read_text())["quantization_config"]["format"] == "pack-quantized"
    with torch.inference_mode():
        logits = [model(reference["ids"]).logits for model in (made, by_hand)]
    assert torch.allclose(logits[0], logits[1], atol=1e-4)
    assert not torch.allclose(logits[0], reference["logits"], atol=1e-2)  # quantized: not the reference's
    assert reference["ids"].shape[1] == TOKENS


def test_a_loaded_folder_stays_compressed_after_running(folders, reference) -> None:
    import torch

    from pytest_quant.backends.base import memory_footprint

    model, label = ct.load_folder(folders[0], "cpu")
    with torch.inference_mode():
        model(reference["ids"])
    q_proj = model.model.layers[0].self_attn.q_proj
    assert {"weight_packed", "weight_scale", "weight_shape"} <= set(dict(q_proj.named_parameters()))
    assert not hasattr(model, "ct_decompress_hook") and "pack-quantized" in label
    assert memory_footprint(model) < 0.45 * reference["footprint"]


def test_both_folders_are_gated_as_prequantized(pytester: pytest.Pytester, folders) -> None:
    pytester.makepyfile("""
import pytest

@pytest.mark.vram_budget("12 MiB")
def test_checkpoint(quant_model):
    assert quant_model.recipe.name == "prequantized"
    assert quant_model.quality.perplexity < 400
""")
    result = pytester.runpytest(*FAST, f"--quant-model={folders[0]}", f"--quant-model={folders[1]}", "-rf")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines_random([
        "*tiny-ct-made*prequantized*cpu*compressed-tensors W4A16 int g128 sym (pack-quantized)*",
        "*tiny-ct-by-hand*prequantized*cpu*compressed-tensors W4A16 int g128 sym (pack-quantized)*",
    ])

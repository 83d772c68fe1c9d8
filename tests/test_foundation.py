"""The plugin registers, stays cheap to import, and its embedded model and texts load offline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pytest_quant.models import TINY_DIR, embedded_calibration_text, embedded_eval_text


def test_help_shows_quant_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*pytest-quant: gate LLM quantization quality*", "*--quant-gpu*", "*--quant-model*"])
    for flag in ("--quant-recipes", "--quant-device", "--quant-eval-text", "--quant-eval-tokens", "--quant-strict"):
        assert flag in result.stdout.str()
    for ini in ("quant_gpu", "quant_model", "quant_recipes", "quant_eval_tokens", "quant_strict"):
        assert ini in result.stdout.str()


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        ["*vram_budget*", "*tokens_per_second*", "*perplexity_delta*", "*kl_divergence*", "*quant_gpu*"]
    )


def test_importing_the_plugin_does_not_import_torch() -> None:
    code = (
        "import sys, pytest_quant.plugin; "
        "print(','.join(m for m in ('torch', 'transformers', 'bitsandbytes', 'gptqmodel') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_entry_point_names_the_plugin() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert names.get("quant") == "pytest_quant.plugin"


def test_embedded_model_loads_offline_and_predicts_austen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32)
    config = model.config
    assert config.model_type == "llama" and config.num_hidden_layers >= 4
    assert config.hidden_size % 128 == 0 and config.intermediate_size % 128 == 0
    assert (TINY_DIR / "model.safetensors").stat().st_size <= 20 * 10**6
    ids = tokenizer("It is a truth universally acknowledged, that a single man in possession of a good", return_tensors="pt")
    with torch.inference_mode():
        loss = model(**ids, labels=ids["input_ids"]).loss.item()
    # a trained model, not noise: far below log(vocab) = 9.0 nats
    assert loss < 6.0


def test_embedded_texts_are_held_out_and_provenance_recorded() -> None:
    eval_text = embedded_eval_text().read_text(encoding="utf-8")
    calibration = embedded_calibration_text().read_text(encoding="utf-8")
    assert "Anne Elliot" in eval_text and "Catherine Morland" in calibration
    provenance = json.loads((TINY_DIR / "PROVENANCE.json").read_text())
    assert set(provenance["corpus"]["eval"]) == {"austen_persuasion.txt"}
    assert "austen_persuasion.txt" not in provenance["corpus"]["train"]
    assert "austen_northangerabbey.txt" not in provenance["corpus"]["train"]
    assert provenance["heldout_perplexity"]["fp32"] <= 100

"""backends.auto_round: recipe fields, the missing-library path, and SignRound against round-to-nearest at the same
bits (iters = 0) on the embedded model, exported in AutoRound's format and loaded back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quant import backends
from pytest_quant.backends import auto_round as ar
from pytest_quant.models import TINY_DIR


def test_importing_the_backend_imports_no_library() -> None:
    import subprocess
    import sys

    code = ("import sys, pytest_quant.backends.auto_round as m; m.validate; "
            "print([n for n in ('torch', 'auto_round', 'transformers') if n in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"

@pytest.mark.parametrize("settings, words", [
    ({"bits": 5}, ["bits", "5", "2, 3, 4, 8"]),
    ({"group_size": 0}, ["group_size", "0"]),
    ({"iters": -1}, ["iters", "-1", "0: round to nearest"]),
    ({"iters": "200"}, ["iters", "'200'"]),
    ({"sym": "yes"}, ["sym", "'yes'"]),
    ({"calibration_samples": 0}, ["calibration_samples", "0"]),
])
def test_validate_names_the_field_the_value_and_what_is_accepted(settings, words) -> None:
    with pytest.raises(ValueError) as info:
        ar.validate(settings)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_the_recipe_records_its_iterations_and_defaults() -> None:
    assert ar.spec({}) == {"bits": 4, "group_size": 128, "sym": True, "iters": ar.DEFAULT_ITERS, "seed": ar.SEED}
    assert ar.spec({"iters": 0})["iters"] == 0


def test_a_missing_auto_round_skips_naming_the_extra(run_quant, monkeypatch) -> None:
    monkeypatch.setattr(backends, "is_installed", lambda name: name != "auto_round")
    result = run_quant("def test_q(quant_model):\n    pass\n", "--quant-recipes=autoround-w4g128", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*auto_round not installed*pip install 'pytest-quant[[]autoround[]]'*"])


@pytest.mark.slow
def test_signround_beats_round_to_nearest_and_its_export_loads_back(tmp_path, reference) -> None:
    """Minutes on 2 cores (two quantizations of the embedded model): run with -m slow."""
    import torch

    from pytest_quant.recipes import Recipe

    def kl(settings):
        recipe = Recipe("ar", "auto_round", tuple(sorted(settings.items())))
        loaded = backends.load(backends.LoadRequest(TINY_DIR, recipe, "cpu", cache_dir=tmp_path))
        with torch.inference_mode():
            logprobs = loaded.model(reference["ids"]).logits.float().log_softmax(-1)
        ref = reference["logits"].log_softmax(-1)
        saved = json.loads((Path(loaded.notes["checkpoint"]) / "config.json").read_text())
        assert saved["quantization_config"]["quant_method"] == "auto-round" and loaded.notes["iters"] == settings["iters"]
        return float((ref.exp() * (ref - logprobs)).sum(-1).mean())

    rtn, signround = kl({"iters": 0}), kl({"iters": ar.DEFAULT_ITERS})
    assert 0 < signround < 0.8 * rtn, (signround, rtn)

"""backends/common.non_language_modules: the parts of an image-text-to-text model outside its language model, found
on a meta-device skeleton (what GPTQModel leaves unquantized and an AWQ checkpoint's load must not convert)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_quant.backends import common


def test_a_llava_names_its_tower_projector_and_head(tmp_path: Path) -> None:
    from pytest_quant.models.build_vlm import build_vlm

    folder = build_vlm(tmp_path / "tiny-vlm")
    assert common.non_language_modules(folder) == ["lm_head", "model.vision_tower", "model.multi_modal_projector"]


def test_a_model_without_a_language_model_of_its_own_is_refused_naming_what_to_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    class Opaque(torch.nn.Module):  # remote code that offers no get_decoder
        def __init__(self) -> None:
            super().__init__()
            self.tower, self.text = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

    class Auto:
        @staticmethod
        def from_config(config, trust_remote_code=False):
            return Opaque()

    monkeypatch.setattr(common, "pretrained_class", lambda path: Auto)
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", lambda path, trust_remote_code=False: object())
    with pytest.raises(ValueError, match=r"Opaque names no language model of its own .* modules_to_not_convert"):
        common.non_language_modules(tmp_path)

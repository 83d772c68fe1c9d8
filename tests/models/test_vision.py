"""Which Auto class loads a folder, from its config.json alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quant.models import TINY_DIR
from pytest_quant.models.vision import architecture, auto_class_name, is_image_text_to_text


@pytest.mark.parametrize("config, expected", [
    ({"architectures": ["LlamaForCausalLM"]}, "AutoModelForCausalLM"),
    ({"architectures": ["LlavaForConditionalGeneration"], "vision_config": {"model_type": "siglip"}},
     "AutoModelForImageTextToText"),
    # MiniCPM-V: its own code, reached through AutoModel only (as its README loads it)
    ({"architectures": ["MiniCPMV"], "vision_config": {"hidden_size": 1152},
      "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMVConfig", "AutoModel": "modeling_minicpmv.MiniCPMV"}},
     "AutoModel"),
    ({"vision_config": {}}, "AutoModelForCausalLM"),
])
def test_auto_class(config: dict, expected: str) -> None:
    assert auto_class_name(config) == expected


def test_a_folder_is_image_text_to_text_by_its_vision_config(tmp_path: Path) -> None:
    assert not is_image_text_to_text(TINY_DIR)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "vision_config": {"model_type": "clip"}}))
    assert is_image_text_to_text(tmp_path)
    assert architecture(json.loads((tmp_path / "config.json").read_text())) == "llava"
    (tmp_path / "config.json").write_text("{broken")
    assert not is_image_text_to_text(tmp_path)

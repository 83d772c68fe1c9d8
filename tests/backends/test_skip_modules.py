"""llm_int8_skip_modules names against transformers' matching rule: a name that keeps no layer is caught."""

from __future__ import annotations

import pytest

from pytest_quant.backends.skip_modules import matches, skip_problem, suggestions, unmatched

LAYERS = ["model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2", "lm_head",
          "model.language_model.layers.0.self_attn.o_proj", "model.resampler.kv_proj"]


@pytest.mark.parametrize("pattern, name, expected", [
    ("lm_head", "lm_head", True),
    ("kv_proj", "model.resampler.kv_proj", True),  # the seed's: a name's end
    ("model.multi_modal_projector", "model.multi_modal_projector.linear_1", True),  # from the start, to a dot
    ("multi_modal_projector", "model.multi_modal_projector.linear_1", False),  # inside: transformers quantizes it
    ("model.language_model.layers.1", "model.language_model.layers.11.mlp", False),
    ("model.language_model.layers.*", "model.language_model.layers.11.mlp", True),
    ("[", "lm_head", False),  # not a regular expression: only the end is compared
])
def test_matches_as_transformers_does(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected


def test_unmatched_names_and_what_to_write() -> None:
    assert unmatched(["lm_head", "kv_proj", "multi_modal_projector", "vision_tower"], LAYERS) == \
        ["multi_modal_projector", "vision_tower"]
    assert suggestions("multi_modal_projector", LAYERS) == ["model.multi_modal_projector"]


def test_skip_problem_on_a_model_names_the_pattern_and_the_fix() -> None:
    import torch

    class Projector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear_1 = torch.nn.Linear(2, 2)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.multi_modal_projector = Projector()
            self.lm_head = torch.nn.Linear(2, 2)

    model = Model()
    assert skip_problem(model, ["multi_modal_projector.linear_1", "lm_head"], "llm_int8_skip_modules", "r") is None
    assert skip_problem(model, None, "llm_int8_skip_modules", "r") is None
    problem = skip_problem(model, ["projector", "lm_head"], "llm_int8_skip_modules", "nf4-vlm")
    assert problem.startswith("recipe nf4-vlm: llm_int8_skip_modules: 'projector' matches no module among the linear "
                              "layers of Model")

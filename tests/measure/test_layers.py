"""measure.layers: an error is charged to the layer that makes it, against a plain recomputation."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pytest_quant.measure.layers import HEAD_TOKENS, capture, cosine, layer_errors, sqnr_db, unsupported

TEXT = "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who, for his own amusement, never took up any book"


@pytest.fixture(scope="module")
def sample(tiny):
    model, tokenizer = tiny
    ids = [tokenizer.bos_token_id] + list(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    return ids, capture(model, ids)


def test_sqnr_and_cosine_are_the_textbook_formulas():
    ref = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    out = torch.tensor([[3.0, 5.0], [1.0, 1.0]])
    assert sqnr_db(ref, out) == pytest.approx(10 * math.log10(26 / 2))
    assert cosine(ref, out) == pytest.approx(((9 + 20) / (5 * math.sqrt(34)) + 1 / math.sqrt(2)) / 2)
    assert sqnr_db(ref, ref) == math.inf


def test_the_reference_keeps_every_layers_input_and_output(tiny, sample):
    model, _ = tiny
    ids, kept = sample
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    hidden = out.hidden_states  # embeddings, then each layer's output (the last after the final norm)
    layers = model.config.num_hidden_layers
    assert kept.names == tuple(f"layers.{i}" for i in range(layers))
    for i in range(layers):
        assert torch.equal(kept.inputs[i], hidden[i][0])
    for i in range(layers - 1):
        assert torch.equal(kept.outputs[i], hidden[i + 1][0])
    assert torch.allclose(kept.head_logits, out.logits[0, :HEAD_TOKENS].float())


def test_a_perturbed_middle_layer_is_the_only_one_charged(tiny, sample):
    model, _ = tiny
    ids, kept = sample
    broken = copy.deepcopy(model)
    with torch.no_grad():
        weight = broken.model.layers[3].mlp.down_proj.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std())
    found = layer_errors(broken, kept)
    own = {e.name: e.sqnr_db for e in found.layers}
    assert found.worst(1)[0].name == "layers.3"
    assert all(own[name] == math.inf for name in own if name != "layers.3")  # the others get the reference's input
    # the cumulative error carries on after layer 3
    later = [e for e in found.layers if e.name in ("layers.4", "layers.5", "lm_head")]
    assert all(math.isfinite(e.cumulative_sqnr_db) for e in later)
    # its own SQNR recomputed by hand: layer 3 of the broken model on the reference's input to it
    with torch.inference_mode():
        hidden = broken(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        rotary = broken.model.rotary_emb(kept.inputs[3][None], torch.arange(len(ids))[None])
        from transformers.masking_utils import create_causal_mask

        mask = create_causal_mask(config=broken.config, inputs_embeds=kept.inputs[3][None], attention_mask=None,
                                  cache=None, position_ids=torch.arange(len(ids))[None])
        mine = broken.model.layers[3](kept.inputs[3][None], attention_mask=mask, position_embeddings=rotary,
                                      position_ids=torch.arange(len(ids))[None])
    assert own["layers.3"] == pytest.approx(sqnr_db(kept.outputs[3], mine[0]), rel=1e-6)
    assert found.layers[3].cumulative_sqnr_db == pytest.approx(sqnr_db(kept.outputs[3], hidden[4][0]), rel=1e-6)
    assert "layers.3" in found.sentence()


def test_a_runtime_without_torch_layers_is_skipped_with_the_reason(sample):
    class Runtime:
        pass

    found = layer_errors(Runtime(), sample[1])
    assert found.unsupported and not found.layers and "exposes no decoder layers" in found.skipped
    assert unsupported(Runtime()) == found.skipped

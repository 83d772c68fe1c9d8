"""pytest_quant.measure.generation: greedy generation agreement, on token lists and on the embedded model."""

from __future__ import annotations

import copy

import pytest

from pytest_quant.measure.generation import GenerationAgreement, Generations, agreement, greedy_generate

TOKENS = 16


def test_agreement_counts_exact_matches_and_prefixes():
    reference = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]]
    model = [[1, 2, 3, 4], [5, 6, 0, 8], [0, 9, 9, 9]]
    result = agreement(reference, model, 4)
    assert result.exact_match_percent == pytest.approx(100 / 3)
    assert result.mean_prefix_tokens == pytest.approx((4 + 2 + 0) / 3)
    assert (result.prompts, result.generated_tokens, result.tokens_compared) == (3, 12, 4)


def test_agreement_only_compares_the_first_n_tokens():
    result = agreement([[1, 2, 3, 4]], [[1, 2, 0, 0]], 2)
    assert result.exact_match_percent == 100.0 and result.mean_prefix_tokens == 2


def test_agreement_when_a_generation_ends_early():
    eos = 0
    # both stop at the same EOS: full agreement; one stops where the other goes on: divergence there
    both_stop = agreement([[1, 2, eos]], [[1, 2, eos]], 8)
    assert both_stop.exact_match_percent == 100.0 and both_stop.mean_prefix_tokens == 8
    one_stops = agreement([[1, 2, eos]], [[1, 2, 3, 4, 5]], 8)
    assert one_stops.exact_match_percent == 0.0 and one_stops.mean_prefix_tokens == 2
    shorter = agreement([[1, 2, 3, 4]], [[1, 2]], 8)
    assert shorter.exact_match_percent == 0.0 and shorter.mean_prefix_tokens == 2


def test_agreement_takes_seconds_from_generations():
    result = agreement(Generations(((1, 2),), 0.5), Generations(((1, 3),), 1.25), 2)
    assert result.seconds == 1.25 and result.mean_prefix_tokens == 1


@pytest.mark.parametrize("reference, model, n", [([[1]], [[1], [2]], 1), ([], [], 1), ([[1]], [[1]], 0)])
def test_agreement_rejects_bad_input(reference, model, n):
    with pytest.raises(ValueError):
        agreement(reference, model, n)


@pytest.fixture(scope="module")
def tiny():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_quant.models import TINY_DIR
    from pytest_quant.prompts import default_prompts, render

    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    prompts = default_prompts(4)
    prompt_ids = [render(p, tokenizer) for p in prompts]
    reference = greedy_generate(model, tokenizer, prompt_ids, TOKENS)
    return model, tokenizer, prompts, prompt_ids, reference


def perturbed(model, relative_noise: float, seed: int = 0):
    """A copy with gaussian noise of ``relative_noise`` times each Linear weight's standard deviation added."""
    import torch

    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in noisy.modules():
            if isinstance(module, torch.nn.Linear):
                weight = module.weight
                weight += torch.randn(weight.shape, generator=generator) * weight.std() * relative_noise
    return noisy


def test_greedy_generate_returns_new_tokens_only(tiny):
    model, tokenizer, _, prompt_ids, reference = tiny
    assert len(reference.token_ids) == len(prompt_ids)
    assert all(1 <= len(ids) <= TOKENS for ids in reference.token_ids)
    assert reference.generated_tokens == sum(len(ids) for ids in reference.token_ids)
    assert reference.seconds > 0
    # the first new token is the argmax after the prompt, not the prompt's own last token
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt_ids[0]])).logits
    assert reference.token_ids[0][0] == int(logits[0, -1].argmax())


def test_greedy_generate_matches_transformers_greedy(tiny):
    import torch
    from transformers import GenerationConfig

    model, tokenizer, _, prompt_ids, reference = tiny
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=TOKENS,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids[1]]), generation_config=config)
    assert tuple(out[0, len(prompt_ids[1]):].tolist()) == reference.token_ids[1]


def test_greedy_generate_stops_at_eos(tiny):
    model, tokenizer, _, prompt_ids, _ = tiny

    class EosTokenizer:
        eos_token_id = None

    first = greedy_generate(model, tokenizer, prompt_ids[:1], 4).token_ids[0]
    # make the model's first greedy token an EOS: generation must end right after it
    stub = EosTokenizer()
    stub.eos_token_id = first[0]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        stopped = greedy_generate(model, stub, prompt_ids[:1], 4).token_ids[0]
    finally:
        model.generation_config.eos_token_id = saved
    assert stopped == (first[0],)


def test_model_agrees_with_itself(tiny):
    model, tokenizer, prompts, prompt_ids, reference = tiny
    again = greedy_generate(model, tokenizer, prompt_ids, TOKENS)
    result = agreement(reference, again, TOKENS, prompts=[p.display for p in prompts], tokenizer=tokenizer)
    assert isinstance(result, GenerationAgreement)
    assert result.exact_match_percent == 100.0
    assert result.mean_prefix_tokens == TOKENS
    assert result.prompts == 4 and result.seconds == again.seconds
    prompt, reference_text, model_text = result.samples[0]
    assert prompt == prompts[0].display and reference_text == model_text and reference_text


def test_heavy_perturbation_scores_lower_than_light(tiny):
    model, tokenizer, _, prompt_ids, reference = tiny
    light = agreement(reference, greedy_generate(perturbed(model, 0.02), tokenizer, prompt_ids, TOKENS), TOKENS)
    heavy = agreement(reference, greedy_generate(perturbed(model, 1.0), tokenizer, prompt_ids, TOKENS), TOKENS)
    assert heavy.mean_prefix_tokens < light.mean_prefix_tokens
    assert heavy.exact_match_percent <= light.exact_match_percent
    assert heavy.exact_match_percent < 100.0


def test_greedy_generate_rejects_bad_input(tiny):
    model, tokenizer, _, _, _ = tiny
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(model, tokenizer, [[1, 2]], 0)
    with pytest.raises(ValueError, match="no tokens"):
        greedy_generate(model, tokenizer, [[]], 2)

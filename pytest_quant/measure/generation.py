"""Generation agreement: does the quantized model *say* what the reference says, token for token?

Greedy decoding, one prompt at a time (batch 1, so no padding can change a logit), with the KV cache. The
figures: the percent of prompts whose first N generated tokens equal the reference's, and the mean number of
tokens before the first divergence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Generations:
    """New tokens per prompt (an EOS that ended a generation is kept as its last token) and the time taken."""

    token_ids: tuple[tuple[int, ...], ...]
    seconds: float

    @property
    def generated_tokens(self) -> int:
        return sum(len(ids) for ids in self.token_ids)


@dataclass(frozen=True)
class GenerationAgreement:
    exact_match_percent: float  # prompts whose first tokens_compared generated tokens equal the reference's
    mean_prefix_tokens: float  # tokens before the first divergence, tokens_compared when there is none
    tokens_compared: int
    prompts: int
    generated_tokens: int  # by the model under test
    seconds: float  # the model under test's generation time
    samples: tuple[tuple[str, str, str], ...] = ()  # (prompt, reference text, model text) per prompt


def greedy_generate(model, tokenizer, prompts_token_ids, max_new_tokens: int, new_cache=None) -> Generations:
    """Greedy (argmax) continuation of each prompt, up to ``max_new_tokens`` or an EOS token; ``new_cache``
    makes each prompt's KV cache (a quantized one), else transformers' dynamic cache.

    Decoding is done here rather than through ``model.generate`` so that no generation_config setting
    (sampling, repetition penalty, ...) can change what greedy means. Works for any transformers causal LM.
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = _model_device(model)
    stop = _eos_ids(model, tokenizer)
    outputs = []
    _synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt_ids in prompts_token_ids:
            if len(prompt_ids) == 0:
                raise ValueError("a prompt rendered to no tokens")
            inputs = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
            past = None if new_cache is None else new_cache()
            new: list[int] = []
            while len(new) < max_new_tokens:
                out = model(input_ids=inputs, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = int(out.logits[0, -1].argmax())
                new.append(token)
                if token in stop:
                    break
                inputs = torch.tensor([[token]], dtype=torch.long, device=device)
            outputs.append(tuple(new))
    _synchronize(device)
    return Generations(tuple(outputs), time.perf_counter() - start)


def agreement(reference_tokens, model_tokens, n_tokens: int, *, prompts=(), tokenizer=None, seconds=None):
    """Compare the first ``n_tokens`` generated tokens of each prompt.

    ``reference_tokens``/``model_tokens``: ``Generations`` or lists of token-id lists, one per prompt, in the
    same order. Two generations that both end (EOS) at the same token without diverging agree completely,
    so their prefix counts as ``n_tokens``. With ``tokenizer`` and ``prompts`` (display strings) the samples
    hold the decoded texts; ``seconds`` defaults to the model's ``Generations.seconds``.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    reference = _token_lists(reference_tokens)
    generated = _token_lists(model_tokens)
    if len(reference) != len(generated) or not reference:
        raise ValueError(f"need the same non-zero number of prompts; got {len(reference)} and {len(generated)}")
    if seconds is None:
        seconds = getattr(model_tokens, "seconds", 0.0)
    exact = 0
    prefix_total = 0
    for ref, out in zip(reference, generated):
        ref, out = ref[:n_tokens], out[:n_tokens]
        if ref == out:
            exact += 1
            prefix_total += n_tokens
        else:
            prefix_total += next(i for i, (a, b) in enumerate(zip(ref + [None], out + [None])) if a != b)
    samples = ()
    if tokenizer is not None and prompts:
        samples = tuple(
            (str(prompt), _decode(tokenizer, ref[:n_tokens]), _decode(tokenizer, out[:n_tokens]))
            for prompt, ref, out in zip(prompts, reference, generated)
        )
    return GenerationAgreement(
        exact_match_percent=100.0 * exact / len(reference),
        mean_prefix_tokens=prefix_total / len(reference),
        tokens_compared=n_tokens,
        prompts=len(reference),
        generated_tokens=sum(len(ids) for ids in generated),
        seconds=float(seconds),
        samples=samples,
    )


def _token_lists(tokens) -> list[list[int]]:
    ids = tokens.token_ids if isinstance(tokens, Generations) else tokens
    return [[int(t) for t in row] for row in ids]


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def _eos_ids(model, tokenizer) -> frozenset[int]:
    ids = set()
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                  getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _model_device(model):
    import torch

    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)

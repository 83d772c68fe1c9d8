"""Do the timed decode paths decode what the model decodes? Greedy tokens per path, and a compiled step's
top-1 agreement with the eager step, teacher-forced so that one flipped token does not end the comparison."""

from __future__ import annotations

from dataclasses import dataclass

from .throughput import (COMPILED, CUDA_GRAPH, EAGER, cache_length, check_arguments, eager_run, model_device,
                         static_run)

STATIC = "static"  # the step over the static cache, run eagerly: what the graph and the compile must equal
PATHS = (EAGER, STATIC, CUDA_GRAPH, COMPILED)


def _decoder(model, prompt, decode_tokens: int, path: str, keep_logits: bool = False):
    """A prefilled ``StaticDecoder`` for ``path``: compiled and/or captured as the timed decode would be."""
    from .decode_graph import StaticDecoder

    decoder = StaticDecoder(model, prompt.shape[0], cache_length(prompt.shape[1], decode_tokens))
    try:
        if keep_logits:
            decoder.keep_logits()
        decoder.prefill(prompt)
        if path == COMPILED:
            decoder.compile()
        if path == CUDA_GRAPH or (path == COMPILED and prompt.device.type == "cuda"):
            decoder.capture()
    except BaseException:
        decoder.close()
        raise
    return decoder


def greedy_tokens(model, prompt_ids: list[int], decode_tokens: int, path: str, batch_size: int = 1) -> list[list[int]]:
    """The ``decode_tokens + 1`` greedy tokens after ``prompt_ids`` (the prefill's, then one per step), per
    sequence, decoded by ``path``: "eager" (the dynamic-cache loop that eager timing runs), "static" (the
    step over a static cache, run eagerly), "cuda-graph" (that step captured and replayed; GPU only) or
    "compiled" (the step through torch.compile, captured on a GPU)."""
    import torch

    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}; got {path!r}")
    check_arguments(prompt_ids, decode_tokens, 1, 0, batch_size, "auto")
    prompt = torch.tensor([list(prompt_ids)] * batch_size, device=model_device(model))
    tokens: list = []
    with torch.inference_mode():
        if path == EAGER:
            eager_run(model, prompt, decode_tokens, tokens)
        else:
            decoder = _decoder(model, prompt, decode_tokens, path)
            try:
                static_run(decoder, prompt, decode_tokens, tokens)
            finally:
                decoder.close()
        stacked = torch.cat(tokens, dim=1).cpu()
    return stacked.tolist()


@dataclass(frozen=True)
class StepAgreement:
    path: str
    steps: int  # decode steps compared (per sequence)
    first_token_equal: bool  # the prefill's token (the same eager prefill on both sides: a sanity check)
    leading_equal_steps: int  # steps before the first disagreement: as long as free-running tokens stay equal
    top1_agreement_percent: float  # steps whose greedy token equals the eager step's, fed the eager tokens
    max_logit_difference: float  # the largest |path - eager step| over every step's logits (fed the same tokens)


def teacher_forced_logits(model, prompt_ids: list[int], tokens: list[int], path: str = STATIC):
    """The last-position logits of each step of ``path`` ("static": the step over the static cache run eagerly,
    "cuda-graph" or "compiled") after ``prompt_ids``, fed ``tokens`` one by one: a float32 [len(tokens), vocab]
    tensor on the CPU, and whether the prefill's greedy token was ``tokens[0]``."""
    import torch

    if path not in (STATIC, CUDA_GRAPH, COMPILED):
        raise ValueError(f"path must be 'static', 'cuda-graph' or 'compiled'; got {path!r}")
    prompt = torch.tensor([list(prompt_ids)], device=model_device(model))
    rows = []
    with torch.inference_mode():
        decoder = _decoder(model, prompt, len(tokens), path, keep_logits=True)
        try:
            decoder.prefill(prompt)
            first_equal = int(decoder.token_ids.item()) == int(tokens[0])
            for token in tokens:
                decoder.token_ids.fill_(int(token))
                decoder.step()
                rows.append(decoder.logits[0].to("cpu", copy=True))  # the buffer is overwritten by the next step
        finally:
            decoder.close()
    return torch.stack(rows), first_equal


def step_agreement(model, prompt_ids: list[int], decode_tokens: int, path: str = COMPILED) -> StepAgreement:
    """Decode ``decode_tokens`` greedy tokens with the eager static step, then feed each of them to that step and
    to ``path``'s (teacher forcing): where their greedy tokens agree, and how far apart their logits are."""
    if path not in (CUDA_GRAPH, COMPILED):
        raise ValueError(f"path must be 'cuda-graph' or 'compiled'; got {path!r}")
    expected = greedy_tokens(model, prompt_ids, decode_tokens, STATIC)[0]
    eager, _ = teacher_forced_logits(model, prompt_ids, expected[:-1], STATIC)
    other, first_equal = teacher_forced_logits(model, prompt_ids, expected[:-1], path)
    agree = (other.argmax(-1) == eager.argmax(-1)).tolist()
    leading = next((i for i, ok in enumerate(agree) if not ok), len(agree))
    return StepAgreement(path, decode_tokens, first_equal, leading, 100.0 * sum(agree) / len(agree),
                         float((other - eager).abs().max()))

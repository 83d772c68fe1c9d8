"""Perplexity, KL divergence and top-1 agreement over lm-evaluation-harness's rolling windows, in one forward pass.

The windowing is lm-evaluation-harness's ``loglikelihood_rolling`` (``lm_eval.utils.get_rolling_token_windows``
followed by ``make_disjoint_window`` and HFLM's ``(context + continuation)[-(max_length + 1):][:-1]``), so that
with ``stride == max_length`` the perplexity here is the one lm-eval reports for the same tokens. KL divergence
and top-1 agreement are the statistics llama.cpp's ``perplexity --kl-divergence`` reports: KL(P_reference ||
P_model) per scored token (mean and 99th percentile), and the share of scored tokens whose argmax agrees.
The reference is kept compactly (its top-k log-probabilities, ``measure.reference``); per-token arrays come
back as ``TokenScores`` for finer statistics (``measure.stats``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .scoring import QualityMeasurement, TokenScores, WindowScorer  # noqa: F401 - their home
from .tokens import tokenize_text


@dataclass(frozen=True)
class RollingWindow:
    """One model input; its last ``len(target_ids)`` positions predict ``target_ids``."""

    input_ids: tuple[int, ...]
    target_ids: tuple[int, ...]

    @property
    def n_scored(self) -> int:
        return len(self.target_ids)


def rolling_windows(token_ids, prefix_token: int, max_length: int, stride: int) -> list[RollingWindow]:
    """Windows that score every token of ``token_ids`` exactly once, each with at most ``max_length`` inputs.

    lm-eval's algorithm with ``context_len = max_length - stride + 1`` (lm-eval itself uses ``context_len=1``,
    which is ``stride == max_length``). The first window is ``[prefix_token] + tokens[:max_length - 1]`` and
    scores ``tokens[:max_length]``; each later window scores the next ``stride`` tokens (fewer in the last one)
    from a full ``max_length`` input ending just before the last scored token, so the last window carries extra
    context rather than being short. All windows therefore have the same input length whenever
    ``len(token_ids) >= max_length``.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be between 1 and max_length={max_length}, got {stride}")
    tokens = list(token_ids)
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    windows = [RollingWindow(tuple([prefix_token] + tokens[: first - 1]), tuple(tokens[:first]))]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, stride)
        end = predicted + n
        windows.append(RollingWindow(tuple(tokens[end - max_length - 1 : end - 1]), tuple(tokens[end - n : end])))
        predicted = end
    return windows


@dataclass(frozen=True)
class EvalSpec:
    """What text to score and how. ``stride_tokens`` defaults to ``context_tokens`` (lm-eval's windows)."""

    text_path: Path
    max_tokens: int | None = None  # truncate the tokenized text to this many tokens; None keeps all
    context_tokens: int = 512  # clamped to the model's max_position_embeddings by prepare()
    stride_tokens: int | None = None
    batch_windows: int = 8

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2 (or None for the whole text), got {self.max_tokens}")
        if self.context_tokens < 1:
            raise ValueError(f"context_tokens must be >= 1, got {self.context_tokens}")
        if self.stride_tokens is None:
            object.__setattr__(self, "stride_tokens", self.context_tokens)
        if self.stride_tokens < 1:
            raise ValueError(f"stride_tokens must be >= 1, got {self.stride_tokens}")
        if self.stride_tokens > self.context_tokens:
            raise ValueError(
                f"stride_tokens={self.stride_tokens} is larger than context_tokens={self.context_tokens}; "
                "tokens between windows would never be scored"
            )
        if self.batch_windows < 1:
            raise ValueError(f"batch_windows must be >= 1, got {self.batch_windows}")


@dataclass(frozen=True)
class EvalWindows:
    """A tokenized text cut into rolling windows; made once per session and reused for every model."""

    windows: tuple[RollingWindow, ...] = field(repr=False)
    tokens_scored: int
    context_tokens: int
    stride_tokens: int
    prefix_token: int
    text_path: str


def default_prefix_token(tokenizer) -> int:
    """BOS, else EOS: HFLM.prefix_token_id's choice in lm-evaluation-harness."""
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token; pass prefix_token explicitly")


def model_max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def prepare(tokenizer, spec: EvalSpec, prefix_token: int | None = None, max_positions: int | None = None) -> EvalWindows:
    """Tokenize ``spec.text_path`` once and cut it into windows.

    ``max_positions`` (the model's ``max_position_embeddings``, see ``model_max_positions``) caps the context;
    the stride is capped with it.
    """
    text = Path(spec.text_path).read_text(encoding="utf-8")
    tokens = tokenize_text(tokenizer, text)
    if spec.max_tokens is not None:
        tokens = tokens[: spec.max_tokens]
    if len(tokens) < 2:
        raise ValueError(f"{spec.text_path} has {len(tokens)} tokens; at least 2 are needed")
    context = spec.context_tokens if max_positions is None else min(spec.context_tokens, max_positions)
    stride = min(spec.stride_tokens, context)
    prefix = default_prefix_token(tokenizer) if prefix_token is None else int(prefix_token)
    windows = rolling_windows(tokens, prefix, context, stride)
    return EvalWindows(tuple(windows), len(tokens), context, stride, prefix, str(spec.text_path))


def _batches(windows, batch_windows: int):
    """Consecutive windows of equal input length, at most ``batch_windows`` at a time (no padding needed)."""
    batch: list[RollingWindow] = []
    for window in windows:
        if batch and (len(batch) == batch_windows or len(window.input_ids) != len(batch[0].input_ids)):
            yield batch
            batch = []
        batch.append(window)
    if batch:
        yield batch


def _model_device(model):
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _accepts_logits_to_keep(model) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def evaluate(
    model,
    windows: EvalWindows,
    batch_windows: int = 8,
    reference=None,
    keep_reference_top_k=None,
    window_inputs=None,
):
    """Score every window; return ``(QualityMeasurement, CompactReference or None, TokenScores)``.

    One forward pass per batch of windows serves perplexity and, when ``reference`` (a ``CompactReference``
    made by an earlier call on the same ``EvalWindows`` with ``keep_reference_top_k``) is given, KL divergence
    and top-1 agreement against it. ``keep_reference_top_k`` (an int k, or ``"exact"``) makes this model a
    reference: its top-k log-probabilities come back as a ``CompactReference`` (see ``measure.reference``).
    Only the scored positions' logits are requested where the model supports ``logits_to_keep``; the float32
    log-softmax is taken one window at a time, so the device holds one batch's logits plus one window's
    float32 copy. ``window_inputs(first, count)``: the other model inputs of windows ``first .. first + count``
    (an image's pixel values, ``measure.vision``).
    """
    import torch

    from .reference import ReferenceBuilder, parse_top_k

    if batch_windows < 1:
        raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
    keep_top_k = None if keep_reference_top_k is None else parse_top_k(keep_reference_top_k)
    device = _model_device(model)
    scorer = WindowScorer(windows, reference, device)
    trim_logits = _accepts_logits_to_keep(model)
    builder = None
    first = 0

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in _batches(windows.windows, batch_windows):
            input_ids = torch.tensor([w.input_ids for w in batch], dtype=torch.long).to(device, non_blocking=True)
            n_keep = max(w.n_scored for w in batch)
            kwargs: dict[str, Any] = {"use_cache": False}
            if trim_logits and n_keep < input_ids.shape[1]:
                kwargs["logits_to_keep"] = n_keep
            extra = {} if window_inputs is None else window_inputs(first, len(batch))
            logits = model(input_ids=input_ids, **extra, **kwargs).logits
            first += len(batch)
            if logits.device != device:  # a model spread over GPUs returns them from its last one
                logits = logits.to(device)
            for row, window in enumerate(batch):
                logprobs = logits[row, -window.n_scored:].float().log_softmax(dim=-1)
                offset = scorer.offset
                target_logprobs, argmax = scorer.add(logprobs, window)
                if keep_reference_top_k is not None:
                    if builder is None:
                        builder = ReferenceBuilder(windows.tokens_scored, logprobs.shape[-1], keep_top_k)
                    builder.add(offset, logprobs, target_logprobs, argmax)
                del logprobs
            del logits
        measurement, scores = scorer.finish(start, batch_windows)
    return measurement, None if builder is None else builder.finish(), scores

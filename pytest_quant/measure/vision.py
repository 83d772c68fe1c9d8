"""What an image-text-to-text model is measured with: its language part (for memory), a prefill carrying the image
(for decode speed and generations), and the reference's answers as scored windows (for KL and perplexity over the
answer tokens, conditioned on the image). Pure measurement: no pytest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .quality import EvalWindows, RollingWindow


def language_part(model) -> list:
    """The language model and its head (LLaVA: ``model.language_model`` and ``lm_head``); empty where the model has
    none (a text model, a runtime that is no torch module)."""
    inner = getattr(model, "model", None)
    decoder = getattr(inner, "language_model", None) if inner is not None else None
    decoder = decoder if decoder is not None else getattr(model, "language_model", None)
    if decoder is None or getattr(model, "get_output_embeddings", None) is None:
        return []
    head = model.get_output_embeddings()
    return [decoder] + ([head] if head is not None else [])


def language_part_bytes(model) -> int | None:
    """Bytes the language part's parameters and buffers store, each storage once, quantized weights at their packed
    size (a tensor subclass by the plain tensors inside it); None without a language part of its own (a text model)."""
    import torch

    if not isinstance(model, torch.nn.Module) or not language_part(model):
        return None
    seen: set[int] = set()

    def stored(tensor) -> int:
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(type(tensor), "__tensor_flatten__"):
            return sum(stored(getattr(tensor, name)) for name in tensor.__tensor_flatten__()[0])
        data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
        if type(data) is not torch.Tensor:
            return stored(data)
        key = data.untyped_storage().data_ptr() or id(data)
        if key in seen:
            return 0
        seen.add(key)
        return data.numel() * data.element_size()

    parts = torch.nn.ModuleList(language_part(model))
    return sum(stored(t) for t in list(parts.parameters()) + list(parts.buffers()))


class ImagePrefill:
    """The model, called with the image's inputs added to every prefill (a call on more than one position; the
    decode steps that follow read the image from the KV cache). Attributes are the model's."""

    def __init__(self, model, image_inputs: dict[str, Any]):
        self._model = model
        self._image_inputs = image_inputs

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        input_ids = args[0] if args else kwargs.get("input_ids")
        if input_ids is not None and input_ids.shape[-1] > 1:
            rows = input_ids.shape[0]
            kwargs.update({k: v.repeat(rows, *([1] * (v.dim() - 1))) if rows > 1 else v
                           for k, v in self._image_inputs.items()})
        return self._model(*args, **kwargs)


@dataclass(frozen=True)
class AnswerWindows:
    """The reference's answers to the image prompts, as windows every model scores teacher-forced: prompt tokens
    (the image's expanded) and the answer but its last token as input, the answer as targets."""

    windows: EvalWindows
    answers: tuple[tuple[int, ...], ...]


def answer_windows(prompt_ids, answers, source: str) -> AnswerWindows:
    """Windows of the prompts followed by the reference's answers (greedy decoding answers at least one token)."""
    if not answers or any(not a for a in answers):
        raise ValueError(f"{source}: every image prompt needs an answer of at least one token")
    windows = tuple(RollingWindow(tuple(p) + tuple(a[:-1]), tuple(a)) for p, a in zip(prompt_ids, answers))
    longest = max(len(w.input_ids) for w in windows)
    scored = sum(w.n_scored for w in windows)
    evaluated = EvalWindows(windows, scored, longest, longest, int(windows[0].input_ids[0]), source)
    return AnswerWindows(evaluated, tuple(tuple(a) for a in answers))


def stacked_inputs(per_prompt: list[dict[str, Any]]):
    """``window_inputs`` for ``quality.evaluate``: the image inputs of windows ``first .. first + count`` stacked
    (one window per prompt, in order)."""
    import torch

    def inputs(first: int, count: int) -> dict[str, Any]:
        chosen = per_prompt[first:first + count]
        return {k: torch.cat([c[k] for c in chosen]) for k in chosen[0]}

    return inputs

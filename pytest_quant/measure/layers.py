"""Which layer broke: each decoder layer's own error, and the ``lm_head``'s.

On a sample of the eval tokens the reference keeps each decoder layer's input and output and the ``lm_head``'s
input and first logits (``capture``). A quantized model is then run twice on the same tokens (``layer_errors``):
once with every decoder layer (and the head) fed the reference's input to it, through forward pre-hooks, so that
a layer's error is its own and not that of every layer before it (the isolated SQNR); once as it is (the
cumulative SQNR, the error the stream has gathered by that layer). SQNR is torchao's: ``10 log10(sum ref^2 /
sum (ref - out)^2)`` in dB over the sample; cosine is the mean over tokens of the per-token cosine similarity.
A model that is not a torch module with a list of ``num_hidden_layers`` decoder layers (ONNX Runtime, llama.cpp)
has no hidden states to compare: its errors are skipped with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SAMPLE_TOKENS = 128  # tokens of the first eval window the layers are compared on
HEAD_TOKENS = 32  # of them, the positions whose logits are kept (a vocabulary of 128k: 16 MiB in float32)
HEAD = "lm_head"


@dataclass(frozen=True, eq=False)
class LayerReference:
    """What the reference leaves to compare layers with (CPU tensors, in the reference's dtype)."""

    input_ids: tuple[int, ...]
    names: tuple[str, ...]  # the decoder layers' module names
    inputs: Any  # [layers, tokens, hidden]: each decoder layer's input
    outputs: Any  # [layers, tokens, hidden]: its output
    head_input: Any  # [tokens, hidden]: the lm_head's input (after the final norm)
    head_logits: Any  # [HEAD_TOKENS, vocab] float32: the reference's logits


@dataclass(frozen=True)
class LayerError:
    name: str
    sqnr_db: float  # its own error: run on the reference's input to it
    cosine: float
    cumulative_sqnr_db: float  # the error of its output in the quantized model run as it is
    cumulative_cosine: float


@dataclass(frozen=True)
class LayerErrors:
    layers: tuple[LayerError, ...] = ()  # the decoder layers in order, then lm_head
    tokens: int = 0
    skipped: str | None = None  # why nothing was compared
    unsupported: bool = False  # skipped because the runtime exposes no hidden states

    def worst(self, n: int = 2) -> tuple[LayerError, ...]:
        """The ``n`` layers of lowest own SQNR, worst first."""
        return tuple(sorted(self.layers, key=lambda e: e.sqnr_db)[:n])

    @property
    def min_sqnr_db(self) -> float | None:
        return min((e.sqnr_db for e in self.layers), default=None)

    @property
    def min_cosine(self) -> float | None:
        return min((e.cosine for e in self.layers), default=None)

    def sentence(self, n: int = 2) -> str:
        """``worst layers: layers.3 8.1 dB (cumulative 7.9 dB), lm_head 31.0 dB``, or the reason none was compared."""
        changed = [e for e in self.worst(n) if math.isfinite(e.sqnr_db)]  # an untouched layer is not a suspect
        if not changed:
            return f"layer errors not measured: {self.skipped}" if self.skipped else ""
        return "worst layers: " + ", ".join(f"{e.name} {e.sqnr_db:.1f} dB own SQNR (cumulative {e.cumulative_sqnr_db:.1f} dB)"
                                            for e in changed)


def decoder_layers(model) -> tuple[list[str], list[Any]] | None:
    """The decoder layers' names and modules: the first ``nn.ModuleList`` of ``config.num_hidden_layers`` modules."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not isinstance(model, torch.nn.Module):
        return None
    config = getattr(model, "config", None)
    count = getattr(getattr(config, "text_config", None) or config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and count and len(module) == count:
            return [f"{name.rpartition('.')[2]}.{i}" for i in range(count)], list(module)
    return None


def unsupported(model) -> str | None:
    """Why layers cannot be compared on ``model`` (None: they can)."""
    if decoder_layers(model) is None:
        return (f"{type(model).__name__} exposes no decoder layers as torch modules (no hidden states to compare, as "
                "with ONNX Runtime or llama.cpp)")
    if getattr(model, "get_output_embeddings", lambda: None)() is None:
        return f"{type(model).__name__} has no output embeddings (lm_head) to hook"
    return None


def _hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _run(model, input_ids, pre, post):
    """One forward pass with ``pre`` (module -> replacement input or None) and ``post`` (module, output) hooks on
    the decoder layers and the head."""
    import torch

    names, modules = decoder_layers(model)
    head = model.get_output_embeddings()
    handles = []
    for index, module in enumerate(modules + [head]):
        def before(mod, args, kwargs, index=index):
            replacement = pre(index, _hidden(args, kwargs))
            if replacement is None:
                return None
            if args:
                return (replacement,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": replacement}

        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(lambda mod, args, out, index=index: post(index, _output(out))))
    try:
        from .quality import _model_device

        device = _model_device(model)
        with torch.inference_mode():
            model(input_ids=torch.tensor([list(input_ids)], device=device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return names, len(modules)


def capture(model, input_ids) -> LayerReference | None:
    """The reference's layer inputs and outputs on ``input_ids`` (None when its layers cannot be hooked)."""
    import torch

    if unsupported(model):
        return None
    inputs, outputs = {}, {}

    def pre(index, hidden):
        inputs[index] = hidden[0].detach().cpu()

    def post(index, out):
        outputs[index] = out[0].detach().cpu()

    names, count = _run(model, input_ids, pre, post)
    return LayerReference(tuple(input_ids), tuple(names), torch.stack([inputs[i] for i in range(count)]),
                          torch.stack([outputs[i] for i in range(count)]), inputs[count],
                          outputs[count][:HEAD_TOKENS].float())


def sqnr_db(reference, other) -> float:
    """10 log10(signal / noise) over every element, in float64; inf when they are equal."""
    ref, out = reference.double(), other.double().to(reference.device)
    noise = float(((ref - out) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def cosine(reference, other) -> float:
    import torch

    ref, out = reference.double(), other.double().to(reference.device)
    return float(torch.nn.functional.cosine_similarity(ref, out, dim=-1).mean())


def layer_errors(model, reference: LayerReference) -> LayerErrors:
    """Each decoder layer's and the head's own and cumulative error against ``reference``."""
    problem = unsupported(model)
    if problem:
        return LayerErrors(skipped=problem, unsupported=True)
    names = decoder_layers(model)[0]
    if tuple(names) != reference.names:
        return LayerErrors(skipped=f"its decoder layers ({len(names)}) are not the reference's ({len(reference.names)})")
    count = len(names)
    own, chained = {}, {}

    def feed(index, hidden):
        source = reference.inputs[index] if index < count else reference.head_input
        return source[None].to(hidden.device, hidden.dtype)

    def keep(store):
        def post(index, out):
            store[index] = out[0].detach().float().cpu()
        return post

    _run(model, reference.input_ids, feed, keep(own))
    _run(model, reference.input_ids, lambda index, hidden: None, keep(chained))
    out = []
    for index, name in enumerate(list(names) + [HEAD]):
        ref = reference.outputs[index].float() if index < count else reference.head_logits
        mine, whole = own[index][:len(ref)], chained[index][:len(ref)]
        out.append(LayerError(name, sqnr_db(ref, mine), cosine(ref, mine), sqnr_db(ref, whole), cosine(ref, whole)))
    return LayerErrors(tuple(out), len(reference.input_ids))

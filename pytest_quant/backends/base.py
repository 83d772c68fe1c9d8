"""What backends that quantize a model in place share: naming the kernel that ran, and the bytes really stored
(tensor subclasses and packed weights that ``get_memory_footprint`` miscounts); cutting the frames a
library's stored import error keeps alive (or importing the library off the caller's stack); the check that a recipe names only its backend's fields; the cached build of a quantized folder (GPTQModel's, AutoRound's); and the
shell of a runtime that is no torch module (ONNX Runtime's session, llama.cpp's context) shaped like a causal LM.

torchao swaps ``nn.Linear`` weights for tensor subclasses that report the float dtype, ``quantize_dynamic``
moves int8 weights into packed params: both are counted here as stored. Light: torch is imported inside.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Callable, Mapping


def refuse_unknown_fields(backend: str, settings: Mapping[str, Any], fields: frozenset[str]) -> None:
    """A recipe's settings may name the backend's ``fields`` (and ``backend``, ``description``), nothing else."""
    unknown = sorted(set(settings) - fields - {"backend", "description"})
    if unknown:
        raise ValueError(f"{backend}: unknown field(s) {unknown}; accepted: {sorted(fields)}")


def kernel_name(model) -> str:
    """What ran in place of ``nn.Linear``: a quantized module's class, or a linear's weight subclass
    (torchao keeps ``nn.Linear`` and swaps its weight), e.g. ``dynamic.Linear`` or
    ``Linear(LinearActivationQuantizedTensor)``."""
    import torch

    names = set()
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            weight_type = type(module.weight.data) if isinstance(module.weight, torch.nn.Parameter) else type(module.weight)
            if weight_type is not torch.Tensor:
                names.add(f"Linear({weight_type.__name__})")
        elif "linear" in type(module).__name__.lower() and "packedparams" not in type(module).__name__.lower():
            names.add(module._get_name())
    return ",".join(sorted(names)) or "Linear"


def tensor_bytes(tensor) -> int:
    """Bytes a tensor really stores: a tensor subclass (torchao's) counts the plain tensors inside it."""
    import torch

    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor) is not torch.nn.Parameter and type(tensor) is not torch.Tensor:
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, n)) for n in names)
    if isinstance(tensor, torch.nn.Parameter) and type(tensor.data) is not torch.Tensor:
        return tensor_bytes(tensor.data)
    if tensor.is_quantized:
        scales = 0
        if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scales = tensor.q_per_channel_scales().numel() * 8 + tensor.q_per_channel_zero_points().numel() * 8
        return tensor.numel() * tensor.element_size() + scales
    return tensor.numel() * tensor.element_size()


def memory_footprint(model) -> int:
    """Bytes of the model's parameters, buffers and dynamic-quantized packed weights, each storage once."""
    seen: set[int] = set()
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = _storage_key(tensor)
        if key not in seen:
            seen.add(key)
            total += tensor_bytes(tensor)
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            # Unpacked copies, made afresh by each call: counted per module, never deduplicated by address.
            total += sum(tensor_bytes(t) for t in packed._weight_bias() if t is not None)
    return total


def _storage_key(tensor) -> int:
    """The address of a plain tensor's storage (tied weights share it); a tensor subclass's identity."""
    try:
        return tensor.untyped_storage().data_ptr() or id(tensor)
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):
        return id(tensor)


def attach_footprint(model) -> None:
    """Replace the model's ``get_memory_footprint`` with one that counts the bytes really stored."""
    model.get_memory_footprint = types.MethodType(lambda self, return_buffers=True: memory_footprint(self), model)


def drop_import_tracebacks(*packages: str) -> int:
    """Clear the tracebacks of exceptions that modules of ``packages`` keep in their globals; how many.

    A library that keeps an optional import's error (GPTQModel 7.7: ``gguf_cpp._LLAMA_CPP_IMPORT_ERROR``,
    "No module named 'llama_cpp'") keeps its traceback, whose frames' ``f_back`` chain is every frame that
    was running when the library was first imported: the backend's ``load`` and the plugin's caller, with
    the model they return in their locals. The model then outlives its release (675 MiB at the 1.1B shape
    on the H200). The error's message stays; only its traceback goes.
    """
    cleared = 0
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType) or not any(name == p or name.startswith(p + ".") for p in packages):
            continue
        for value in list(vars(module).values()):
            seen = 0
            while isinstance(value, BaseException) and seen < 8:  # the error and what it was raised from
                if value.__traceback__ is not None:
                    value.__traceback__ = None
                    cleared += 1
                value, seen = value.__cause__ or value.__context__, seen + 1
    return cleared


def off_stack(call: Callable[[], Any]) -> None:
    """Run ``call`` (a library's first import) in a short-lived thread; what it raises is raised here.

    A library may keep an error from its own first import where no module global shows it: ModelOpt 0.47
    imports PuLP, whose ``COPT_DLL`` class keeps the ``TypeError`` of a missing solver DLL (``COPT_DLL.err``)
    with its traceback. Imported on the caller's stack, that traceback's frames chain by ``f_back`` to the
    caller and its callers (the session's load, a backend's ``load``), whose locals at return hold the model:
    2048 MiB left after the release at the 1.1B shape on the H200. In a thread, the chain ends at the
    thread's own frames.
    """
    import threading

    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # re-raised in the caller below
            failed.append(exc)

    thread = threading.Thread(target=run, name="pytest-quant-import", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def cached_quantization(root: Path, inputs: dict[str, Any], make: Callable[[Path], Mapping[str, Any]],
                        notes: dict[str, Any]) -> tuple[Path, float, str]:
    """The quantized folder of ``inputs`` in the cache under ``root`` (``qcache``): built by ``make(staged)``, which
    quantizes into ``staged`` and returns ``quantize_seconds`` and any other figure of the build, on a miss; found
    on a hit. Returns the folder, the seconds quantizing took in this call (0 on a hit) and the cache's status;
    ``notes`` get the key, the build's other figures (or, on a hit, the seconds it took when cached) and a stale
    entry's problem."""
    from .. import qcache

    key = qcache.cache_key(inputs)
    built = qcache.build(root, key, inputs, make)
    seconds = 0.0
    if built.status == "hit":
        notes["quantize_seconds_when_cached"] = built.info.get("quantize_seconds")
    else:
        seconds = built.info["quantize_seconds"]
        notes.update({name: value for name, value in built.info.items() if name != "quantize_seconds"})
    if built.problem:
        notes["cache_problem"] = built.problem
    notes["cache_key"] = key
    return built.path, seconds, built.status


class CausalLMOutput:
    """What a runtime's call returns, as a transformers causal LM's output: ``.logits``, ``.past_key_values``."""

    def __init__(self, logits, past_key_values=None):
        self.logits, self.past_key_values = logits, past_key_values


class RuntimeCausalLM:
    """A runtime that is no torch module, called the way the plugin calls a transformers causal LM: on CPU in
    float32, ``eval()`` is itself and ``parameters()`` one empty CPU tensor (where the plugin asks a model for its
    device); a subclass writes ``forward`` (a call is a forward) and ``get_memory_footprint``."""

    def __init__(self):
        import torch

        self.device = torch.device("cpu")  # logits come back as CPU tensors whatever the runtime ran on
        self.dtype = torch.float32
        self._dummy = torch.empty(0)

    def eval(self):
        return self

    def parameters(self):
        yield self._dummy

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


def cpu_settings(request, backend: str, why: str, defaults: dict, validate) -> dict:
    """A CPU-only backend's settings for ``request``: the recipe's over ``defaults``, validated; a device other
    than the CPU is refused first (``why``: what keeps the backend on the CPU)."""
    if not str(request.device).startswith("cpu"):
        raise ValueError(f"{backend} runs on CPU only ({why}); got device {request.device!r}")
    settings = {**defaults, **request.recipe.options}
    validate(settings)
    return settings

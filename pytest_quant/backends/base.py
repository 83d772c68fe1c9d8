"""What backends that quantize a model in place share: naming the kernel that ran, and the bytes really stored
(tensor subclasses and packed weights that ``get_memory_footprint`` miscounts); and cutting the frames a
library's stored import error keeps alive.

torchao swaps ``nn.Linear`` weights for tensor subclasses that report the float dtype, ``quantize_dynamic``
moves int8 weights into packed params: both are counted here as stored. Light: torch is imported inside.
"""

from __future__ import annotations

import sys
import types


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

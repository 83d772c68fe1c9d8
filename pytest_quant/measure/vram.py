"""Memory as a deployer budgets it: what the loaded model holds, and the peaks of named phases.

On GPU every figure comes from the torch caching allocator, counted above what was allocated when the
tracker started (right before the load): ``resident`` is what the model holds once loading is over (weights,
quantization state, buffers), ``load_peak`` the transient peak while loading, and each phase measured with
``tracker.phase(name)`` (``"generate"``: the timed decode; ``"evaluate"``: the quality pass) its own peak,
resident weights included. On CPU the resident figure is the model footprint and the GPU figures are None.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from .. import hardware
from ..hardware import free_device_memory as release  # noqa: F401 - the one way to give memory back

GENERATE = "generate"
EVALUATE = "evaluate"


@dataclass(frozen=True)
class VramMeasurement:
    device: str
    resident_bytes: int  # GPU: allocator bytes held after the load minus before it; CPU: footprint_bytes
    footprint_bytes: int  # parameters + buffers (transformers' get_memory_footprint)
    load_peak_bytes: int | None = None  # allocator peak while loading, above the start
    generate_peak_bytes: int | None = None  # allocator peak over the timed decode (weights + KV cache + activations)
    eval_peak_bytes: int | None = None  # allocator peak over the quality pass: reported, never budgeted
    nvml_process_bytes: int | None = None  # NVML's figure for this process when read (includes the CUDA context)
    phase_peak_bytes: dict[str, int] = field(default_factory=dict)  # every measured phase, by name
    # a model spread over several GPUs (--quant-device auto): each GPU's resident bytes; the figures above are
    # their sums (the peaks: the sum of each GPU's own peak). Empty on one device.
    resident_bytes_by_device: dict[str, int] = field(default_factory=dict)
    # GPU: bytes of the model's own parameters and buffers on CUDA devices, each storage once (tensor
    # subclasses counted by what they hold). The allocator's resident figure is at least this, unless the
    # model reached the device before the tracker started (a backend that calls before_load too late).
    model_device_bytes: int | None = None
    # an image-text-to-text model: bytes its language part (decoder and head) stores, each storage once, quantized
    # weights packed; the figures above are the whole model's (vision tower and projector too). None: a text model
    language_bytes: int | None = None

    @property
    def source(self) -> str:
        return "torch allocator after load" if self.load_peak_bytes is not None else "model footprint"


class VramTracker:
    """Started right before a model loads; ``loaded()`` once loading is over; ``phase(name)`` around each
    measured phase; ``read(model)`` at the end. ``devices``: every GPU the model may be spread over (default:
    ``device`` alone); each is counted above its own start and the figures are summed."""

    def __init__(self, device: str, devices: tuple[str, ...] | None = None):
        self.device = device
        self.cuda = hardware.is_cuda(device)
        self.devices = tuple(devices or (device,)) if self.cuda else (device,)
        self.before_bytes: dict[str, int] = {}
        self.resident_by_device: dict[str, int] = {}
        self.resident_bytes: int | None = None
        self.load_peak_bytes: int | None = None
        self.phase_peak_bytes: dict[str, int] = {}
        if self.cuda:
            import torch

            for d in self.devices:
                hardware.warm_cublas(d)  # cuBLAS's workspace is not the model's
            torch.cuda.empty_cache()
            for d in self.devices:
                torch.cuda.reset_peak_memory_stats(d)
                self.before_bytes[d] = int(torch.cuda.memory_allocated(d))

    @property
    def allocated_before_bytes(self) -> int:
        return sum(self.before_bytes.values())

    def _synchronize(self) -> None:
        import torch

        for d in self.devices:
            torch.cuda.synchronize(d)

    def _peak_above_start(self) -> int:
        import torch

        return sum(int(torch.cuda.max_memory_allocated(d)) - self.before_bytes[d] for d in self.devices)

    def loaded(self) -> None:
        """Note what the load left allocated (resident) and its peak."""
        if not self.cuda:
            return
        import torch

        self._synchronize()
        self.resident_by_device = {d: int(torch.cuda.memory_allocated(d)) - self.before_bytes[d] for d in self.devices}
        self.resident_bytes = sum(self.resident_by_device.values())
        self.load_peak_bytes = self._peak_above_start()

    @contextlib.contextmanager
    def phase(self, name: str):
        """The allocator peak over the body, above the tracker's start; kept as the highest of repeated phases."""
        if not self.cuda:
            yield
            return
        import torch

        self._synchronize()
        for d in self.devices:
            torch.cuda.reset_peak_memory_stats(d)
        try:
            yield
        finally:
            self._synchronize()
            peak = self._peak_above_start()
            self.phase_peak_bytes[name] = max(peak, self.phase_peak_bytes.get(name, 0))

    def read(self, model) -> VramMeasurement:
        from .vision import language_part_bytes

        footprint = int(model.get_memory_footprint())
        language = language_part_bytes(model)
        if not self.cuda:
            return VramMeasurement(self.device, resident_bytes=footprint, footprint_bytes=footprint,
                                   language_bytes=language)
        if self.resident_bytes is None:
            self.loaded()
        return VramMeasurement(
            self.device,
            resident_bytes=self.resident_bytes,
            footprint_bytes=footprint,
            load_peak_bytes=self.load_peak_bytes,
            generate_peak_bytes=self.phase_peak_bytes.get(GENERATE),
            eval_peak_bytes=self.phase_peak_bytes.get(EVALUATE),
            nvml_process_bytes=sum(filter(None, map(nvml_process_bytes, self.devices))) or None,
            phase_peak_bytes=dict(self.phase_peak_bytes),
            resident_bytes_by_device=({hardware.host_device(d): b for d, b in self.resident_by_device.items()}
                                      if len(self.devices) > 1 else {}),
            model_device_bytes=model_device_bytes(model),
            language_bytes=language,
        )


def model_device_bytes(model) -> int:
    """Bytes of ``model``'s parameters and buffers that live on CUDA devices, each storage counted once; a
    tensor subclass (torchao's) by the plain tensors inside it. 0 for a model on CPU or one that is not a
    torch module (ONNX Runtime's session)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return 0
    seen: set[tuple[str, int]] = set()
    total = 0

    def add(tensor) -> None:
        nonlocal total
        flatten = getattr(type(tensor), "__tensor_flatten__", None)
        if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
            for name in tensor.__tensor_flatten__()[0]:
                add(getattr(tensor, name))
            return
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cuda":
            return
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()

    for tensor in list(model.parameters()) + list(model.buffers()):
        add(tensor.data if isinstance(tensor, torch.nn.Parameter) and type(tensor.data) is not torch.Tensor else tensor)
    return total


def nvml_process_bytes(device: str) -> int | None:
    """This process's GPU memory as NVML sees it, or None without nvidia-ml-py, a driver or permission."""
    if not hardware.is_cuda(device):
        return None
    import torch

    index = torch.device(device).index or 0
    with hardware.nvml() as nvml:
        if nvml is None:
            return None
        try:
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            handle = nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}") if uuid else nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    return int(proc.usedGpuMemory)
        except Exception:  # NVMLError, or a uuid NVML does not know
            return None
    return None


def allocated_bytes(device: str) -> int:
    """Bytes the torch allocator holds for tensors on ``device`` now (0 on CPU)."""
    if not hardware.is_cuda(device):
        return 0
    import torch

    torch.cuda.synchronize(device)
    return int(torch.cuda.memory_allocated(device))


def referrer_chains(obj, depth: int = 12, limit: int = 6) -> list[str]:
    """Why ``obj`` is still alive: chains of referrers, from the object out to a module global, a stored
    exception or a thread's frame, one line each ("a Loaded <- frame load (gptqmodel.py) <- ... <- exception
    ModuleNotFoundError kept in gptqmodel.nn_modules.qlinear.gguf_cpp._LLAMA_CPP_IMPORT_ERROR"). For a release
    check's message: the direct holder alone (a Loaded, a frame) rarely says who to fix."""
    import gc
    import sys
    import types

    modules = {id(vars(m)): name for name, m in list(sys.modules.items()) if isinstance(m, types.ModuleType)}
    here = sys._getframe()

    def name(o) -> str:
        if isinstance(o, types.FrameType):
            return f"frame {o.f_code.co_name} ({o.f_code.co_filename.rsplit('/', 1)[-1]}:{o.f_lineno})"
        if id(o) in modules:
            return f"globals of {modules[id(o)]}"
        if isinstance(o, BaseException):
            return f"exception {type(o).__name__}: {str(o)[:60]}"
        return f"a {type(o).__name__}"

    chains: list[str] = []
    ignore: set[int] = set()
    own_code = {here.f_code}

    def walk(o, path: list[str], seen: set[int]) -> None:
        if len(chains) >= limit:
            return
        found = gc.get_referrers(o)
        referrers = tuple(r for r in found if id(r) not in ignore and id(r) not in seen
                          and not (isinstance(r, types.FrameType) and r.f_code in own_code))
        del found
        ignore.add(id(referrers))
        if id(o) in modules or isinstance(o, types.ModuleType) or len(path) >= depth or not referrers:
            chains.append(" <- ".join(path))
            return
        for r in referrers[:4]:
            walk(r, path + [name(r)], seen | {id(r)})

    own_code.add(walk.__code__)
    walk(obj, [name(obj)], {id(obj)})
    return chains

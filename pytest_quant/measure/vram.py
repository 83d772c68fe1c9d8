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

    @property
    def source(self) -> str:
        return "torch allocator after load" if self.load_peak_bytes is not None else "model footprint"


class VramTracker:
    """Started right before a model loads; ``loaded()`` once loading is over; ``phase(name)`` around each
    measured phase; ``read(model)`` at the end."""

    def __init__(self, device: str):
        self.device = device
        self.cuda = hardware.is_cuda(device)
        self.allocated_before_bytes = 0
        self.resident_bytes: int | None = None
        self.load_peak_bytes: int | None = None
        self.phase_peak_bytes: dict[str, int] = {}
        if self.cuda:
            import torch

            hardware.warm_cublas(device)  # cuBLAS's workspace is not the model's
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.allocated_before_bytes = torch.cuda.memory_allocated(device)

    def loaded(self) -> None:
        """Note what the load left allocated (resident) and its peak."""
        if not self.cuda:
            return
        import torch

        torch.cuda.synchronize(self.device)
        self.resident_bytes = int(torch.cuda.memory_allocated(self.device) - self.allocated_before_bytes)
        self.load_peak_bytes = int(torch.cuda.max_memory_allocated(self.device) - self.allocated_before_bytes)

    @contextlib.contextmanager
    def phase(self, name: str):
        """The allocator peak over the body, above the tracker's start; kept as the highest of repeated phases."""
        if not self.cuda:
            yield
            return
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield
        finally:
            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device) - self.allocated_before_bytes)
            self.phase_peak_bytes[name] = max(peak, self.phase_peak_bytes.get(name, 0))

    def read(self, model) -> VramMeasurement:
        footprint = int(model.get_memory_footprint())
        if not self.cuda:
            return VramMeasurement(self.device, resident_bytes=footprint, footprint_bytes=footprint)
        if self.resident_bytes is None:
            self.loaded()
        return VramMeasurement(
            self.device,
            resident_bytes=self.resident_bytes,
            footprint_bytes=footprint,
            load_peak_bytes=self.load_peak_bytes,
            generate_peak_bytes=self.phase_peak_bytes.get(GENERATE),
            eval_peak_bytes=self.phase_peak_bytes.get(EVALUATE),
            nvml_process_bytes=nvml_process_bytes(self.device),
            phase_peak_bytes=dict(self.phase_peak_bytes),
        )


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

"""Memory: torch allocator peak (and NVML per-process usage) on GPU, the model footprint on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class VramMeasurement:
    device: str
    peak_bytes: int  # what a budget checks: allocator peak over load + evaluation on GPU, footprint on CPU
    footprint_bytes: int  # parameters + buffers (transformers' get_memory_footprint)
    allocator_peak_bytes: int | None = None  # torch.cuda.max_memory_allocated() above what was allocated before load
    load_peak_bytes: int | None = None  # the same peak over the load alone (weights-dominated)
    allocator_reserved_peak_bytes: int | None = None
    nvml_process_bytes: int | None = None  # NVML's figure for this process (includes the CUDA context)

    @property
    def source(self) -> str:
        return "torch allocator peak over load + evaluation" if self.allocator_peak_bytes is not None else "model footprint"


class VramTracker:
    """Started before a model loads; read after its evaluation."""

    def __init__(self, device: str):
        self.device = device
        self.allocated_before_bytes = 0
        self.load_peak_bytes: int | None = None
        if device.startswith("cuda"):
            import torch

            # The first matmul on a device allocates cuBLAS's workspace (32 MiB on Hopper) through the
            # caching allocator and keeps it: allocate it now so no model's figure carries it.
            a = torch.ones(16, 16, device=device, dtype=torch.float16)
            (a @ a).sum().item()
            del a
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.allocated_before_bytes = torch.cuda.memory_allocated(device)
            self.reserved_before_bytes = torch.cuda.memory_reserved(device)

    def loaded(self) -> None:
        """Note the peak so far: the load alone."""
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            self.load_peak_bytes = int(torch.cuda.max_memory_allocated(self.device) - self.allocated_before_bytes)

    def read(self, model) -> VramMeasurement:
        footprint = int(model.get_memory_footprint())
        if not self.device.startswith("cuda"):
            return VramMeasurement(self.device, peak_bytes=footprint, footprint_bytes=footprint)
        import torch

        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - self.allocated_before_bytes
        reserved = torch.cuda.max_memory_reserved(self.device) - self.reserved_before_bytes
        return VramMeasurement(
            self.device,
            peak_bytes=int(peak),
            footprint_bytes=footprint,
            allocator_peak_bytes=int(peak),
            allocator_reserved_peak_bytes=int(reserved),
            load_peak_bytes=self.load_peak_bytes,
            nvml_process_bytes=nvml_process_bytes(self.device),
        )


def nvml_process_bytes(device: str) -> int | None:
    """This process's GPU memory as NVML sees it, or None without nvidia-ml-py or permission."""
    try:
        import pynvml
    except ImportError:
        return None
    import torch

    try:
        pynvml.nvmlInit()
        index = torch.device(device).index or 0
        uuid = torch.cuda.get_device_properties(index).uuid
        handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}") if uuid else pynvml.nvmlDeviceGetHandleByIndex(index)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
        return None
    except pynvml.NVMLError:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def allocated_bytes(device: str) -> int:
    if not device.startswith("cuda"):
        return 0
    import torch

    torch.cuda.synchronize(device)
    return int(torch.cuda.memory_allocated(device))

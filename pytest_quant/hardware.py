"""Devices: kind and index, names, the key baselines are stored under, the environment a figure was
measured in, NVML, library versions, and giving GPU memory back."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

LIBRARIES = ("torch", "transformers", "accelerate", "bitsandbytes", "gptqmodel", "optimum", "llama_cpp_python", "gguf")


def device_kind(device: str) -> str:
    """'cuda:1' -> 'cuda'; 'cpu' -> 'cpu'."""
    return "cuda" if str(device).startswith("cuda") else "cpu"


def is_cuda(device: str) -> bool:
    return device_kind(device) == "cuda"


def device_index(device: str) -> int:
    """'cuda:1' -> 1; 'cuda' -> 0."""
    text = str(device)
    return int(text.split(":", 1)[1]) if ":" in text else 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def hardware_name(device: str) -> str:
    """'NVIDIA H100 80GB HBM3', or the CPU's model name."""
    if not is_cuda(device):
        return cpu_name()
    import torch

    return torch.cuda.get_device_name(device_index(device))


def normalise_hardware_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def hardware_key(device: str) -> str:
    """The GPU's normalised name, or 'cpu'. Versions go into the baseline file, never into the key."""
    return normalise_hardware_name(hardware_name(device)) if is_cuda(device) else "cpu"


def visible_cuda_devices() -> tuple[str, ...]:
    """'cuda:0' .. 'cuda:N-1' for the GPUs this process sees (after CUDA_VISIBLE_DEVICES)."""
    import torch

    return tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))


def placement_devices(device: str, sharded: bool) -> tuple[str, ...]:
    """The devices a model is loaded onto: ``device`` alone, or every visible GPU when spread over them."""
    return visible_cuda_devices() if sharded and is_cuda(device) else (device,)


def placement_key(devices: tuple[str, ...]) -> str:
    """The hardware key of a placement: one device's key; 'nvidia-h100-80gb-hbm3-x2' for a model spread over
    two GPUs of one kind; the kinds joined by '+' for mixed ones."""
    keys = [hardware_key(d) for d in devices]
    if len(set(keys)) == 1:
        return keys[0] + (f"-x{len(keys)}" if len(keys) > 1 else "")
    return "+".join(keys)


def cuda_visible_entries(environ: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """The entries of CUDA_VISIBLE_DEVICES up to the first invalid one (CUDA ignores the rest), or None when it
    is not set."""
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries: list[str] = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry or (entry.lstrip("-").isdigit() and int(entry) < 0):
            break
        entries.append(entry)
    return tuple(entries)


def host_device(device: str, environ: Mapping[str, str] | None = None) -> str:
    """The device as the host numbers it, for reports: 'cuda:3' for a process's 'cuda:0' when
    CUDA_VISIBLE_DEVICES='3' (an xdist worker given GPU 3); 'cuda:0 (GPU-8f1...)' for a UUID entry."""
    entries = cuda_visible_entries(environ) if is_cuda(device) else None
    index = device_index(device)
    if entries is None or index >= len(entries):
        return device
    return f"cuda:{entries[index]}" if entries[index].isdigit() else f"{device} ({entries[index]})"


def placement_label(devices: tuple[str, ...]) -> str:
    """'cuda:3', or 'cuda:0+cuda:1' for a model spread over two GPUs (host numbering)."""
    return "+".join(host_device(d) for d in devices)


@contextlib.contextmanager
def nvml() -> Iterator[Any]:
    """pynvml, initialised for the block and shut down after it; None without nvidia-ml-py or a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        yield None
        return
    try:
        yield pynvml
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def nvidia_driver() -> str | None:
    with nvml() as pynvml:
        if pynvml is not None:
            try:
                version = pynvml.nvmlSystemGetDriverVersion()
                return version.decode() if isinstance(version, bytes) else str(version)
            except Exception:
                pass
    try:
        match = re.search(r"Kernel Module\s+(\S+)", Path("/proc/driver/nvidia/version").read_text())
        return match.group(1) if match else None
    except OSError:
        return None


def library_versions(names: tuple[str, ...] = LIBRARIES, missing: str | None = None) -> dict[str, str]:
    """Installed versions of ``names``; a missing one is left out, or recorded as ``missing`` when given."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if missing is not None:
                versions[name] = missing
    return versions


def environment(device: str) -> dict[str, Any]:
    """The hardware and versions a figure was measured with: recorded beside it, never compared."""
    import torch

    from . import __version__

    hardware: dict[str, Any] = {"key": hardware_key(device)}
    if is_cuda(device):
        props = torch.cuda.get_device_properties(device_index(device))
        hardware.update(name=props.name, compute_capability=f"{props.major}.{props.minor}",
                        memory_bytes=int(props.total_memory), cuda=torch.version.cuda, driver=nvidia_driver())
    else:
        hardware.update(name=cpu_name(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads())
    versions = {"python": platform.python_version(), "pytest-quant": __version__, **library_versions()}
    return {"hardware": {k: v for k, v in hardware.items() if v is not None}, "versions": versions}


def device_memory_bytes(device: str) -> int | None:
    """The memory a model on ``device`` can use at most: the GPU's total, or the host's RAM capped by a cgroup
    memory limit (containers, CI runners); None when it cannot be read."""
    if is_cuda(device):
        try:
            import torch

            return int(torch.cuda.get_device_properties(device_index(device)).total_memory)
        except Exception:
            return None
    limits = []
    with contextlib.suppress(AttributeError, ValueError, OSError):
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for name in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            text = Path(name).read_text().strip()
            if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge number: no limit
                limits.append(int(text))
    return min(limits) if limits else None


def free_device_memory(device: str) -> int:
    """Collect garbage, drop cuBLAS's per-stream workspaces and return cached blocks to the driver; the bytes
    the allocator still holds (0 on CPU).

    cuBLAS keeps a workspace (32 MiB on Hopper) for every stream it has run on, allocated through torch's
    caching allocator: a CUDA-graph capture's warm-up stream left one behind after every timed decode (seen
    on the H100: 32 MiB per capture). PyTorch's own leak checks clear them the same way. The current stream's
    workspace is then made again, as ``warm_cublas`` makes it before a ``VramTracker`` counts anything, so the
    figure compares with what a tracker saw before a load (a leak smaller than the workspace is not hidden).
    """
    import gc

    gc.collect()
    if not is_cuda(device):
        return 0
    import torch

    torch.cuda.synchronize(device)
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:
        with torch.cuda.device(device):
            clear_workspaces()
    torch.cuda.empty_cache()
    warm_cublas(device)
    return int(torch.cuda.memory_allocated(device))


def warm_cublas(device: str) -> None:
    """Make the current stream's cuBLAS workspace (32 MiB on Hopper, kept by the caching allocator) now, so
    that no model's memory figure carries it."""
    import torch

    a = torch.ones(16, 16, device=device, dtype=torch.float16)
    (a @ a).sum().item()
    del a
    torch.cuda.synchronize(device)


def cuda_problem(device: str) -> str | None:
    """Why ``device`` cannot be used for --quant-gpu, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return (f"--quant-gpu: no usable CUDA device: torch {torch.__version__} (built for CUDA {torch.version.cuda}) "
                "reports torch.cuda.is_available() = False"
                + (f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""))
    count = torch.cuda.device_count()
    if device_index(device) >= count:
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(count))
        return f"--quant-device {device}: only {count} CUDA device(s) found ({names})"
    return None

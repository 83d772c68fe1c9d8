"""What a device is called: the GPU's name or the CPU's model, and the key baselines are stored under."""

from __future__ import annotations

import functools
import platform
import re
from pathlib import Path


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
    if not device.startswith("cuda"):
        return cpu_name()
    import torch

    return torch.cuda.get_device_name(int(device.split(":")[1]) if ":" in device else 0)


def normalise_hardware_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def hardware_key(device: str) -> str:
    """The GPU's normalised name, or 'cpu'. Versions go into the baseline file, never into the key."""
    return "cpu" if not device.startswith("cuda") else normalise_hardware_name(hardware_name(device))

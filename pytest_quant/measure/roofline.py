"""How close decode runs to the memory-bandwidth bound: every decode step reads all the weights once.

bound tokens/s = memory bandwidth / bytes of weights; the fraction reported is measured / bound.
"""

from __future__ import annotations

from ..hardware import is_cuda, nvml

# Peak memory bandwidth in bytes/s of GPUs whose NVML figures are unavailable (datasheet values).
DATASHEET_BYTES_PER_S = {
    "nvidia h100 80gb hbm3": 3.35e12,
    "nvidia h100 pcie": 2.0e12,
    "nvidia h200": 4.8e12,
    "nvidia a100-sxm4-80gb": 2.039e12,
    "nvidia a100-sxm4-40gb": 1.555e12,
    "nvidia a100 80gb pcie": 1.935e12,
    "nvidia l4": 3.0e11,
    "nvidia a10g": 6.0e11,
    "nvidia geforce rtx 4090": 1.008e12,
}


def memory_bandwidth_bytes_per_s(device: str) -> float | None:
    """Peak DRAM bandwidth of a CUDA device: NVML's max memory clock x bus width (DDR), else the datasheet."""
    if not is_cuda(device):
        return None
    import torch

    index = torch.device(device).index or 0
    with nvml() as pynvml:
        try:
            if pynvml is not None:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
                bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
                if clock_mhz and bus_bits:
                    return clock_mhz * 1e6 * 2 * bus_bits / 8
        except Exception:  # no permission, or an old driver: fall back to the datasheet
            pass
    name = torch.cuda.get_device_name(index).lower()
    return next((bw for key, bw in DATASHEET_BYTES_PER_S.items() if name.startswith(key)), None)


def roofline_fraction(decode_tokens_per_s: float, weight_bytes: int, bandwidth_bytes_per_s: float | None) -> float | None:
    if not bandwidth_bytes_per_s or weight_bytes <= 0:
        return None
    return decode_tokens_per_s * weight_bytes / bandwidth_bytes_per_s

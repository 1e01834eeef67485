"""Where a computation ran, recorded with every training run and report.

Wall-time numbers (seconds per step, time to target) mean little without the machine and device
that produced them, so run logs and ``results.json`` carry :func:`host_info`.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["host_info"]


def _cpu_model() -> str | None:
    # platform.processor() is often empty or just "x86_64" on Linux; /proc/cpuinfo names the part
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def host_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """Describe the machine and the device a computation runs on.

    Args:
        device (str | torch.device | None): the device the work runs on (e.g. the model's). None
            describes the process: ``device`` is None and ``gpu`` names CUDA device 0 if present.
            Default None.

    Returns:
        dict: ``platform``, ``machine`` (CPU architecture), ``cpu`` (model name or None),
        ``cpu_capability`` (the SIMD level torch dispatches to, e.g. ``AVX2``, ``AVX512``),
        ``torch_threads``, ``device`` (e.g. ``"cpu"``, ``"cuda:0"``; None for the process) and
        ``gpu`` (the CUDA device's name; None when the work runs on the CPU).

    Example:
        >>> info = host_info("cpu")
        >>> info["device"], info["gpu"]
        ('cpu', None)
    """
    dev = torch.device(device) if device is not None else None
    if dev is None:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    elif dev.type == "cuda":
        gpu = torch.cuda.get_device_name(dev)
    else:
        gpu = None
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
            "device": str(dev) if dev is not None else None, "gpu": gpu}

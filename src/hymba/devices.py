"""Device names as users give them: ``auto`` (CUDA if present), ``cpu``, ``cuda``, ``cuda:N``."""

from __future__ import annotations

import torch


def resolve_device(name: str | None) -> torch.device:
    """The device ``name`` means on this machine; ``ValueError`` (naming it) if it has none such."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name} requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device

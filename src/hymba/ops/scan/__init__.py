"""Selective scan: one signature, several implementations.

``selective_scan(...)`` picks the implementation: the ``impl`` argument, else the environment
variable ``HYMBA_SCAN_IMPL`` (``reference`` | ``chunked`` | ``triton``), else the fastest one
available for the tensors' device: the Triton scan on CUDA, the chunked PyTorch scan elsewhere
and whenever ``HYMBA_TRITON=0`` (:mod:`hymba.ops.switches`).
"""

from __future__ import annotations

from torch import Tensor

from .. import switches
from .chunked import selective_scan_chunked
from .reference import selective_scan_reference

IMPLS = switches.SCAN_IMPLS


def _triton_scan():
    from .triton import selective_scan_triton  # imported lazily: needs CUDA and Triton

    return selective_scan_triton


def triton_available() -> bool:
    try:
        _triton_scan()
    except ImportError:
        return False
    return True


def resolve_impl(device_type: str, impl: str | None = None) -> str:
    """The implementation that runs: ``impl`` if given, else ``HYMBA_SCAN_IMPL``, else by device."""
    if not impl:
        impl = switches.scan_impl()
        if impl == "triton" and not switches.fast_paths_enabled():
            raise ValueError("HYMBA_SCAN_IMPL=triton contradicts HYMBA_TRITON=0")
    if impl is None:
        fast = switches.fast_paths_enabled() and device_type == "cuda" and triton_available()
        return "triton" if fast else "chunked"
    if impl not in IMPLS:
        raise ValueError(f"unknown scan implementation {impl!r}; choose one of {IMPLS}")
    return impl


def selective_scan(u: Tensor, *args, impl: str | None = None, **kwargs) -> tuple[Tensor, Tensor]:
    """Dispatching selective scan; see :func:`selective_scan_reference` for the semantics."""
    name = resolve_impl(u.device.type, impl)
    if name == "reference":
        return selective_scan_reference(u, *args, **kwargs)
    if name == "chunked":
        return selective_scan_chunked(u, *args, **kwargs)
    return _triton_scan()(u, *args, **kwargs)


__all__ = ["selective_scan", "selective_scan_reference", "selective_scan_chunked", "resolve_impl"]

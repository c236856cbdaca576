"""Which implementation of an op may run: the one reader of the environment switches.

Every op has a readable PyTorch reference; the fast paths (Triton kernels, FlexAttention, which
compiles to Triton) run where the tensors and the machine allow them. Environment variables, read
at each call (so a test or a debugging session may change them at any time):

``HYMBA_TRITON``
    ``1`` (default): the fast paths run on CUDA tensors where they apply. ``0``: every fast path
    is off: the Triton kernels (norms, rotary, conv, linear, decode steps, K/V stores, decode
    attention), the Triton selective scan (the scan then runs its chunked PyTorch form) and
    FlexAttention (attention then runs through SDPA). ``force``: the Triton kernels run on any
    device, which with ``TRITON_INTERPRET=1`` runs them on CPU tensors (for tests).
``HYMBA_SCAN_IMPL``
    ``reference`` | ``chunked`` | ``triton``: the selective scan's implementation (default: the
    Triton scan on CUDA, else the chunked scan). ``triton`` is refused while ``HYMBA_TRITON=0``.
``HYMBA_ATTN_IMPL``
    ``sdpa``: prefill and training attention never take FlexAttention (default: FlexAttention on
    CUDA for long unpadded self-attention, see :func:`hymba.ops.attention.attention`).
``HYMBA_PDL``
    ``0``: the decode kernels launch without programmatic dependent launch
    (:mod:`hymba.ops._triton`); by default they use it where the GPU has it.
``TRITON_INTERPRET``
    ``1``: Triton's own switch for its CPU interpreter. Read here because the interpreter lacks
    some GPU features: no programmatic dependent launch, no approximate math instructions.

Besides the switches, the facts about the device that the dispatchers and kernels need (Triton
importable, SM count, compute capability) are looked up here, once per device.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

SCAN_IMPLS = ("reference", "chunked", "triton")


def triton_mode() -> str:
    """``HYMBA_TRITON``: ``"on"`` (the default), ``"off"`` (``0``) or ``"force"``."""
    value = os.environ.get("HYMBA_TRITON", "1")
    if value == "0":
        return "off"
    return "force" if value == "force" else "on"


def fast_paths_enabled() -> bool:
    """False when ``HYMBA_TRITON=0`` turns every fast path off."""
    return triton_mode() != "off"


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def scan_impl() -> str | None:
    """The scan implementation ``HYMBA_SCAN_IMPL`` asks for, or None (choose by device). A name
    outside :data:`SCAN_IMPLS` raises ValueError."""
    impl = os.environ.get("HYMBA_SCAN_IMPL") or None
    if impl is not None and impl not in SCAN_IMPLS:
        raise ValueError(f"HYMBA_SCAN_IMPL={impl!r}: choose one of {SCAN_IMPLS}")
    return impl


def flex_attention_allowed() -> bool:
    """Whether FlexAttention may run: not ``HYMBA_ATTN_IMPL=sdpa``, not ``HYMBA_TRITON=0``."""
    return fast_paths_enabled() and os.environ.get("HYMBA_ATTN_IMPL", "") != "sdpa"


def pdl_enabled() -> bool:
    """Whether programmatic dependent launch may be used: not ``HYMBA_PDL=0``, not the interpreter."""
    return os.environ.get("HYMBA_PDL", "1") != "0" and not interpreting()


@functools.cache
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def use_triton(x: Tensor, *others: Tensor | None, differentiable: bool = False) -> bool:
    """True when the Triton kernels may run on ``x`` and the ``others`` of the same call: the
    switch on, ``x`` on a CUDA device (any device with ``HYMBA_TRITON=force``) in a dtype they
    compute (float64 stays on the references: the kernels compute in float32), and no autograd
    through any of them unless the kernels have a backward (``differentiable``)."""
    mode = triton_mode()
    if mode == "off" or not (x.is_cuda or mode == "force") or x.dtype not in _KERNEL_DTYPES:
        return False
    if not differentiable and needs_grad(x, *others):
        return False
    return triton_importable()


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records an operation on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def _sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


# What the kernels size their grids for on a CPU tensor (Triton's interpreter): a small GPU.
INTERPRETER_SMS = 4


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (``INTERPRETER_SMS`` for a CPU tensor under
    Triton's interpreter), looked up once per device, for kernels that size their launch grid to
    the GPU."""
    if device.type != "cuda":
        return INTERPRETER_SMS
    return _sms(_index(device))


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def capability(device: torch.device) -> tuple[int, int]:
    """A CUDA device's compute capability, looked up once per device (the call costs host time
    on every kernel launch otherwise)."""
    return _capability(_index(device))


def pdl_supported(device: torch.device) -> bool:
    """Whether kernels on ``device`` may use programmatic dependent launch: a CUDA device of
    compute capability 9.0 or later (Hopper), not Triton's interpreter, not ``HYMBA_PDL=0``."""
    return device.type == "cuda" and pdl_enabled() and capability(device) >= (9, 0)

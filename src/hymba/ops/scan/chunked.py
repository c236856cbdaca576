"""A vectorised selective scan for the CPU.

The sequential reference spends most of its time dispatching about seven small tensor ops per
time step. Here everything that does not depend on the previous state is computed for a whole
block of time steps at once (a_t = exp(Δ_t A), x_t = Δ_t u_t B_t, y_t = <s_t, C_t>), and only
the recurrence s_t = a_t s_{t-1} + x_t remains sequential.

Without gradients the recurrence itself is split in two levels: each block of ``block`` steps is
cut into groups of ``group`` steps; the recurrence inside every group runs for all groups at once
(``group`` vectorised steps), then one step per group carries the state across groups, then one
vectorised update adds the carried state everywhere. All of it runs in place on cache-sized
buffers. The arithmetic is the reference's (products of decays ≤ 1 and sums), so the results
agree to rounding, with no overflow for any decay.

With gradients a simpler block form is used (one out-of-place fused op per step), which autograd
differentiates directly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import compute_dtype, finish_output, prepare_delta

_BLOCK_ELEMENTS = 1 << 18  # elements of one (block, b, c, n) buffer: 1 MiB in float32


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: Tensor | None = None,
    block: int | None = None,
    group: int = 8,
) -> tuple[Tensor, Tensor]:
    """Same signature and results as :func:`selective_scan_reference`.

    ``block`` time steps are processed at once (default: as many as keep a block's buffers near
    1 MiB, so they stay in cache); ``group`` is the inner group length of the two-level recurrence.
    """
    dtype = compute_dtype(u)
    batch, length, channels = u.shape
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    A = A.to(dtype)
    # Time-major copies, so that every block below is one contiguous slab (T, b, ...).
    delta_tm = delta.transpose(0, 1).contiguous()
    drive_scale = (delta_tm * u.to(dtype).transpose(0, 1))[..., None]  # Δ_t u_t: (L, b, c, 1)
    B_tm = B.to(dtype).transpose(0, 1)[:, :, None, :].contiguous()  # (L, b, 1, n)
    C_tm = C.to(dtype).transpose(0, 1)[..., None].contiguous()  # (L, b, n, 1)
    state = (
        torch.zeros(batch, channels, A.shape[-1], dtype=dtype, device=u.device)
        if initial_state is None
        else initial_state.to(dtype)
    )
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, initial_state)
    )
    scan_block = _block_autograd if needs_grad else _block_inplace
    if block is None:
        per_step = batch * channels * A.shape[-1]
        block = max(group, min(256, (_BLOCK_ELEMENTS // per_step) // group * group))
    ys = []
    for start in range(0, length, block):
        end = min(start + block, length)
        decay = torch.exp(delta_tm[start:end, :, :, None] * A)  # a_t: (T, b, c, n)
        drive = drive_scale[start:end] * B_tm[start:end]  # x_t: (T, b, c, n)
        states, state = scan_block(decay, drive, state, group)
        ys.append(torch.matmul(states, C_tm[start:end])[..., 0])  # y_t = <s_t, C_t>: (T, b, c)
    y = torch.cat(ys, dim=0).transpose(0, 1) if ys else delta.new_zeros(batch, 0, channels)
    return finish_output(y, u, D, z), state


def _block_autograd(decay: Tensor, drive: Tensor, state: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """States of one block, s_t = a_t s_{t-1} + x_t, one fused out-of-place op per step."""
    states = []
    for a_t, x_t in zip(decay.unbind(0), drive.unbind(0)):
        state = torch.addcmul(x_t, a_t, state)
        states.append(state)
    return torch.stack(states), state


def _block_inplace(decay: Tensor, drive: Tensor, state: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """States of one block by the two-level recurrence, overwriting ``decay`` and ``drive``."""
    steps = drive.shape[0]
    if steps % group:
        group = 1
    decay = decay.view(steps // group, group, *decay.shape[1:])
    x = drive.view(steps // group, group, *drive.shape[1:])
    # 1) inside every group, from a zero state: x[:, j] = partial state, decay[:, j] = Π a.
    for j in range(1, group):
        x[:, j].addcmul_(decay[:, j], x[:, j - 1])
        decay[:, j].mul_(decay[:, j - 1])
    # 2) carry the state across groups (one step per group).
    starts = torch.empty_like(x[:, 0])
    for g in range(x.shape[0]):
        starts[g] = state
        state = x[g, -1].addcmul_(decay[g, -1], state)
    # 3) add each group's incoming state to its other steps.
    if group > 1:
        x[:, :-1].addcmul_(decay[:, :-1], starts[:, None])
    return x.view(steps, *x.shape[2:]), state.clone()

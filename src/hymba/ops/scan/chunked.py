"""A vectorised selective scan for the CPU, with a hand-written backward.

The sequential reference spends most of its time dispatching about seven small tensor ops per
time step. Here everything that does not depend on the previous state is computed for a whole
block of time steps at once (a_t = exp(Δ_t A), x_t = Δ_t u_t B_t, y_t = <s_t, C_t>), and the
recurrence s_t = a_t s_{t-1} + x_t is split in two levels: each block is cut into groups of
``group`` steps; the recurrence inside every group runs for all groups at once, then one step
per group carries the state across groups, then one vectorised update adds the carried state
everywhere. All of it runs in place on cache-sized buffers. The arithmetic is the reference's
(products of decays ≤ 1 and sums), so results agree to rounding, with no overflow for any decay.

The backward runs the same two-level recurrence in reverse time for the adjoint state, block by
block, recomputing each block's forward states from the state saved at the block's start: its
memory is that of the inputs plus one state per block.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import compute_dtype, finish_output, prepare_delta

_BLOCK_ELEMENTS = 1 << 20  # elements of one (block, b, c, n) buffer: 4 MiB in float32


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
    group: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Same signature and results as :func:`selective_scan_reference`.

    ``block`` time steps are processed at once (default: as many as keep a block's buffers near
    4 MiB, so they stay in cache); ``group`` is the inner group length of the two-level recurrence
    (default: about the square root of ``block``).
    """
    dtype = compute_dtype(u)
    batch, length, channels = u.shape
    state = initial_state.to(dtype) if initial_state is not None else None
    if state is None:
        state = torch.zeros(batch, channels, A.shape[-1], dtype=dtype, device=u.device)
    if block is None:
        per_step = batch * channels * A.shape[-1]
        block = max(8, min(256, 1 << (_BLOCK_ELEMENTS // per_step).bit_length() - 1))
    if group is None:
        group = 16 if block >= 128 else 8 if block >= 32 else 1
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    y, final = _ScanCore.apply(delta, u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype), state, block, group)
    return finish_output(y, u, D, z), final


class _ScanCore(torch.autograd.Function):
    """y_t = <s_t, C_t>, s_t = exp(Δ_t A) s_{t-1} + Δ_t u_t B_t, on prepared float tensors."""

    @staticmethod
    def forward(ctx, delta, u, A, B, C, state, block, group):  # noqa: D102
        tm = _TimeMajor(delta, u, B, C, block)
        starts, ys = [], []
        for lo in range(0, tm.length, block):
            hi = min(lo + block, tm.length)
            starts.append(state)
            states, state = _recurrence(tm.decay(lo, hi, A), tm.drive(lo, hi), state, group)
            ys.append((states * tm.C_row[lo:hi]).sum(-1))  # y_t = <s_t, C_t>: (T, b, c)
        y = torch.cat(ys).transpose(0, 1) if ys else delta.new_zeros(delta.shape)
        ctx.save_for_backward(delta, u, A, B, C, *starts)
        ctx.block, ctx.group = block, group
        return y, state

    @staticmethod
    def backward(ctx, grad_y, grad_state):  # noqa: D102
        delta, u, A, B, C, *starts = ctx.saved_tensors
        tm = _TimeMajor(delta, u, B, C, ctx.block)
        g_y = grad_y.transpose(0, 1).contiguous()[..., None, :]  # (L, b, 1, c)
        carry = grad_state  # ∂L/∂s at the end of the sequence
        g_delta = torch.empty_like(tm.delta)
        g_u, g_B, g_C = torch.empty_like(tm.delta), torch.empty_like(tm.B), torch.empty_like(tm.C)
        g_A = torch.zeros_like(A)
        for index in reversed(range(len(starts))):
            lo = index * ctx.block
            hi = min(lo + ctx.block, tm.length)
            decay = tm.decay(lo, hi, A).clone()
            states, _ = _recurrence(tm.decay(lo, hi, A), tm.drive(lo, hi), starts[index], ctx.group)
            g_C[lo:hi] = torch.matmul(g_y[lo:hi], states).transpose(-1, -2)  # Σ_c g_y s
            prev = torch.cat([starts[index][None], states[:-1]])
            # Adjoint h_t = g_y_t C_t + a_{t+1} h_{t+1}: the same recurrence, run backwards.
            local = (g_y[lo:hi].transpose(-1, -2) * tm.C[lo:hi].transpose(-1, -2)).flip(0)
            shifted = torch.cat([torch.ones_like(decay[:1]), decay[1:].flip(0)])
            adjoint, _ = _recurrence(shifted, local, carry, ctx.group)
            adjoint = adjoint.flip(0)  # h_t: (T, b, c, n)
            carry = decay[0] * adjoint[0]
            through_decay = adjoint * prev * decay  # ∂L/∂(Δ_t A)
            h_B = torch.matmul(adjoint, tm.B[lo:hi].transpose(-1, -2))[..., 0]  # Σ_n h B: (T, b, c)
            g_delta[lo:hi] = (through_decay * A).sum(-1) + h_B * tm.u[lo:hi]
            g_u[lo:hi] = h_B * tm.delta[lo:hi]
            scale = (tm.delta[lo:hi] * tm.u[lo:hi])[..., None, :]  # (T, b, 1, c)
            g_B[lo:hi] = torch.matmul(scale, adjoint)
            g_A += torch.einsum("tbcn,tbc->cn", through_decay, tm.delta[lo:hi])
        return (
            g_delta.transpose(0, 1), g_u.transpose(0, 1), g_A,
            g_B[:, :, 0, :].transpose(0, 1), g_C[..., 0].transpose(0, 1), carry, None, None,
        )


class _TimeMajor:
    """Time-major (L, b, ...) copies of the scan inputs, so every block is one contiguous slab,
    and two block buffers reused for a_t and x_t (fresh megabyte buffers cost page faults)."""

    def __init__(self, delta: Tensor, u: Tensor, B: Tensor, C: Tensor, block: int) -> None:
        batch, self.length, channels = delta.shape
        self.delta = delta.transpose(0, 1).contiguous()  # (L, b, c)
        self.u = u.transpose(0, 1).contiguous()
        self.B = B.transpose(0, 1)[:, :, None, :].contiguous()  # (L, b, 1, n)
        self.C = C.transpose(0, 1)[..., None].contiguous()  # (L, b, n, 1)
        self.C_row = self.C.transpose(-1, -2)  # (L, b, 1, n)
        self.delta_u = (self.delta * self.u)[..., None]  # (L, b, c, 1)
        shape = (min(block, self.length), batch, channels, B.shape[-1])
        self._decay = delta.new_empty(shape)
        self._drive = delta.new_empty(shape)

    def decay(self, lo: int, hi: int, A: Tensor) -> Tensor:
        """a_t = exp(Δ_t A): (T, b, c, n), in the shared buffer."""
        out = self._decay[: hi - lo]
        return torch.mul(self.delta[lo:hi, :, :, None], A, out=out).exp_()

    def drive(self, lo: int, hi: int) -> Tensor:
        """x_t = Δ_t u_t B_t: (T, b, c, n), in the shared buffer."""
        return torch.mul(self.delta_u[lo:hi], self.B[lo:hi], out=self._drive[: hi - lo])


def _recurrence(decay: Tensor, drive: Tensor, state: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """All s_t = a_t s_{t-1} + x_t of one block (s_{-1} = ``state``), overwriting the inputs."""
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
    incoming = torch.empty_like(x[:, 0])
    for g in range(x.shape[0]):
        incoming[g] = state
        state = x[g, -1].addcmul_(decay[g, -1], state)
    # 3) add each group's incoming state to its other steps.
    if group > 1:
        x[:, :-1].addcmul_(decay[:, :-1], incoming[:, None])
    return x.view(steps, *x.shape[2:]), state.clone()

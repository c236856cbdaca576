"""The SSM branch: Mamba-1 with a causal depthwise conv, inner RMSNorms on Δ/B/C and a selective
scan with float32 state (``hymba-architecture.md`` §3.5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from ..config import HymbaConfig
from .layers import Linear, RMSNorm
from .layout import SequenceLayout


class MambaBranch(nn.Module):
    def __init__(self, config: HymbaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        d, n, r = config.d_inner, config.mamba_d_state, config.dt_rank
        self.conv1d = nn.Conv1d(
            d, d, config.mamba_d_conv, groups=d, bias=config.mamba_conv_bias,
            padding=config.mamba_d_conv - 1,
        )
        self.x_proj = Linear(d, r + 2 * n, bias=False)
        self.dt_proj = Linear(r, d, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1))
        self.D = nn.Parameter(torch.ones(d))
        self.inner_norms = config.mamba_inner_layernorms
        if self.inner_norms:
            eps = config.rms_norm_eps
            self.dt_layernorm = RMSNorm(r, eps)
            self.B_layernorm = RMSNorm(n, eps)
            self.C_layernorm = RMSNorm(n, eps)
        self.dt_rank, self.d_state = r, n

    def forward(self, x: Tensor, z: Tensor, layout: SequenceLayout) -> Tensor:
        """``x``, ``z``: (b, L, d_inner) pre-conv input and gate → (b, L, d_inner).

        Padding positions (``layout.token_valid`` False) leave the conv input and the SSM state
        untouched (zero input, Δ = 0). With a ``layout.state`` the conv/SSM state continues from
        the state's and is written back; a single-token call updates it in place.
        """
        valid = None if layout.token_valid is None else layout.token_valid[..., None]
        if valid is not None:
            x = x * valid.to(x.dtype)
        state = layout.state
        conv_state = state.conv_state(self.layer_idx) if state is not None else None
        ssm_state = state.ssm_state(self.layer_idx) if state is not None else None
        weight = self.conv1d.weight[:, 0, :]
        if conv_state is not None and x.shape[1] == 1:
            return self._step(x[:, 0], z[:, 0], weight, conv_state, ssm_state)[:, None]
        xc, _ = ops.causal_conv1d(x, weight, self.conv1d.bias, conv_state)
        if valid is not None:
            xc = xc * valid.to(xc.dtype)
        dt, B, C = self._project(xc)
        delta = ops.linear(dt, self.dt_proj.weight)  # the bias is added in float32 inside the scan
        if valid is not None:
            delta = delta.masked_fill(~valid, -1e4)  # softplus → exactly 0: the state is kept
        y, new_ssm_state = ops.selective_scan(
            xc, delta, ops.derived(self.A_log, "A", lambda a: -torch.exp(a.float())), B, C, self.D, z,
            delta_bias=self.dt_proj.bias, delta_softplus=True, initial_state=ssm_state,
        )
        if state is not None:
            state.store_ssm(self.layer_idx, x, new_ssm_state)
        return y

    def _project(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sizes = (self.dt_rank, self.d_state, self.d_state)
        if not self.inner_norms:
            return self.x_proj(xc).split(list(sizes), dim=-1)
        norms = (self.dt_layernorm, self.B_layernorm, self.C_layernorm)
        return ops.rms_norm_parts(self.x_proj(xc), sizes, tuple(n.weight for n in norms), norms[0].eps)

    def _step(self, x: Tensor, z: Tensor, weight: Tensor, conv_state: Tensor, ssm_state: Tensor) -> Tensor:
        """One token (b, d_inner) through the conv and the SSM, updating both states in place."""
        norms = (self.dt_layernorm, self.B_layernorm, self.C_layernorm) if self.inner_norms else None
        weights = ops.MambaStepWeights(
            weight, self.conv1d.bias, self.x_proj.weight, tuple(m.weight for m in norms) if norms else None,
            norms[0].eps if norms else 0.0, self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D,
        )
        return ops.mamba_decode_step(x, z, conv_state, ssm_state, weights)

"""The SSM branch: Mamba-1 with a causal depthwise conv, inner RMSNorms on Δ/B/C and a selective
scan with float32 state (``hymba-architecture.md`` §3.5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from ..config import ConfigError, HymbaConfig
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
        self._check_unwrapped()
        valid = None if layout.token_valid is None else layout.token_valid[..., None]
        if valid is not None:
            x = x * valid.to(x.dtype)
        state = layout.state
        conv_state = state.conv_state(self.layer_idx) if state is not None else None
        ssm_state = state.ssm_state(self.layer_idx) if state is not None else None
        if conv_state is not None and x.shape[1] == 1 and valid is None:  # a padded row keeps its state
            return self.step(x[:, 0], z[:, 0], conv_state, ssm_state)[:, None]
        xc, _ = ops.causal_conv1d(x, self._conv_weight(), self.conv1d.bias, conv_state)
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

    def step(self, x: Tensor, z: Tensor, conv_state: Tensor, ssm_state: Tensor) -> Tensor:
        """One token per row (``x``, ``z``: (b, d_inner) pre-conv input and gate) through the
        branch, updating ``conv_state`` (b, d_inner, d_conv) and ``ssm_state`` (b, d_inner,
        d_state) in place; returns (b, d_inner).

        The stages of :meth:`forward` for one step: the conv update, the x projection and the
        Δ/B/C norms (:meth:`_project`), dt_proj, the state update. Where the op allows it
        (:func:`hymba.ops.fused_mamba_step_supported`: a few rows on CUDA), all of them run as
        two fused kernels with the same roundings."""
        self._check_unwrapped()
        norms = self._norms()
        fused = (x, z, conv_state, ssm_state, self._conv_weight(), self.conv1d.bias, self.x_proj.weight,
                 None if norms is None else tuple(m.weight for m in norms), 0.0 if norms is None else norms[0].eps,
                 self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D)
        plain = type(self.x_proj) is Linear and type(self.dt_proj) is Linear  # not wrapped (adapters)
        if plain and ops.fused_mamba_step_supported(*fused):
            return ops.fused_mamba_step(*fused)
        xc = ops.causal_conv1d_update(x, conv_state, self._conv_weight(), self.conv1d.bias)
        dt, B, C = self._project(xc)
        delta = ops.linear(dt, self.dt_proj.weight)  # the bias is added in float32 in the update
        return ops.ssm_decode_step(ssm_state, xc, delta, self.A_log, B, C, self.D, z, self.dt_proj.bias)

    def _check_unwrapped(self) -> None:
        """Refuse an adapter (e.g. PEFT's LoRA) on ``dt_proj`` or ``conv1d``: their weights go
        straight to the kernels (dt_proj's bias is added in float32 inside the scan and the
        decode update, the conv taps feed the conv kernels), so a wrapper would be skipped.
        ``x_proj`` is called as a module on every path that is not a fused weight-level kernel,
        and those kernels run only when it is not wrapped."""
        for name, plain in (("dt_proj", Linear), ("conv1d", nn.Conv1d)):
            if type(getattr(self, name)) is not plain:
                raise ConfigError(
                    f"an adapter on the SSM's {name} (layer {self.layer_idx}) is not supported: its weight "
                    "goes straight to the scan kernels. Adapt in_proj, out_proj, x_proj, gate_proj, "
                    "up_proj or down_proj instead")

    def _conv_weight(self) -> Tensor:
        """The depthwise conv's taps as (d_inner, d_conv), oldest first."""
        return self.conv1d.weight[:, 0, :]

    def _norms(self) -> tuple[RMSNorm, RMSNorm, RMSNorm] | None:
        return (self.dt_layernorm, self.B_layernorm, self.C_layernorm) if self.inner_norms else None

    def _project(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The x projection of the conv output, split into (dt, B, C) and RMS-normalised (with
        the inner norms)."""
        sizes = (self.dt_rank, self.d_state, self.d_state)
        norms = self._norms()
        if norms is None:
            return self.x_proj(xc).split(list(sizes), dim=-1)
        return ops.rms_norm_parts(self.x_proj(xc), sizes, tuple(n.weight for n in norms), norms[0].eps)

"""Small building blocks: RMSNorm, the MLP and rotary position embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..config import HymbaConfig


class RMSNorm(nn.Module):
    """Llama-style RMSNorm: statistics in float32, cast back, then scaled by the weight.

    ``feeds_linear``: the output only feeds linear layers, so under autocast it is produced in
    the dtype they compute in (:func:`hymba.ops.linear_input_dtype`)."""

    def __init__(self, dim: int, eps: float = 1e-6, feeds_linear: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.feeds_linear = feeds_linear

    def forward(self, x: Tensor) -> Tensor:
        out_dtype = ops.linear_input_dtype(x) if self.feeds_linear else None
        return ops.rms_norm(x, self.weight, self.eps, out_dtype)


class Linear(nn.Linear):
    """``nn.Linear`` computed by :func:`hymba.ops.linear` (a Triton kernel for a decode step's few
    rows on CUDA, cuBLAS otherwise); the same parameters and state-dict keys."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.linear(x, self.weight, self.bias)


class MLP(nn.Module):
    """SwiGLU (``mlp_hidden_act='silu'``) or squared-ReLU (``'relu2'``) feed-forward, no biases."""

    def __init__(self, config: HymbaConfig) -> None:
        super().__init__()
        h, m = config.hidden_size, config.intermediate_size
        self.gated = config.mlp_hidden_act == "silu"
        if self.gated:
            self.gate_proj = Linear(h, m, bias=False)
        self.up_proj = Linear(h, m, bias=False)
        self.down_proj = Linear(m, h, bias=False)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """The MLP of ``x``, plus ``residual`` if given (added in the down projection's kernel;
        the caller gives ``residual`` up: without autograd it may hold the result afterwards)."""
        if not self.gated:
            act = F.relu(self.up_proj(x)).square()
        elif type(self.gate_proj) is Linear and type(self.up_proj) is Linear:  # not wrapped (adapters)
            act = ops.swiglu(x, self.gate_proj.weight, self.up_proj.weight)
        else:
            act = ops.silu_mul(self.gate_proj(x), self.up_proj(x))
        if residual is None:
            return self.down_proj(act)
        if type(self.down_proj) is Linear:
            return ops.linear(act, self.down_proj.weight, self.down_proj.bias, residual, accumulate=True)
        return residual + self.down_proj(act)


def rope_base(config: HymbaConfig) -> float:
    """RoPE base; ``rope_type='ntk'`` applies the released static NTK scaling (factor 2)."""
    base = float(config.rope_theta)
    if config.rope_type == "ntk":
        d = config.qk_head_dim
        ratio = 2 * config.max_position_embeddings / config.orig_max_position_embeddings - 1
        base *= ratio ** (d / (d - 2))
    return base


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions (angles in float32, cast to the activation dtype).

    The inverse frequencies are kept in float32 outside the module's buffers, so casting the
    model to bf16 never rounds them.
    """

    def __init__(self, config: HymbaConfig) -> None:
        super().__init__()
        d = config.qk_head_dim
        exponents = torch.arange(0, d, 2, dtype=torch.int64, device="cpu").float() / d
        self._inv_freq = 1.0 / (rope_base(config) ** exponents)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``positions``: (L,) or (b, L) → cos, sin of shape (1 or b, 1, L, d)."""
        if self._inv_freq.device != positions.device:
            self._inv_freq = self._inv_freq.to(positions.device)
        pos = positions.reshape(-1, positions.shape[-1]).float()
        angles = pos[..., None] * self._inv_freq
        angles = torch.cat([angles, angles], dim=-1)[:, None]
        return angles.cos().to(dtype), angles.sin().to(dtype)

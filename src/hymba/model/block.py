"""The decoder layer: norm → hybrid mixer → residual → norm → MLP → residual.

The hybrid mixer runs the attention and SSM branches in parallel on one fused input projection,
normalises each branch's output, averages them and projects back to the model width.
"""

from __future__ import annotations

from torch import Tensor, nn

from .. import ops
from ..config import HymbaConfig, LayerSpec
from .attention import AttentionBranch
from .layers import MLP, Linear, RMSNorm
from .layout import SequenceLayout
from .ssm import MambaBranch
from .state import SharedKV


class HybridMixer(nn.Module):
    """Fused in_proj → (attention ∥ SSM) → per-branch RMSNorm → mean → out_proj."""

    def __init__(self, config: HymbaConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        d_inner, eps = config.d_inner, config.rms_norm_eps
        q_width = config.num_attention_heads * config.qk_head_dim
        k_width = config.num_key_value_heads * config.qk_head_dim
        v_width = config.num_key_value_heads * config.value_head_dim
        # Column layout of the fused projection, in the released order: Q, K, V, x, z.
        self.split = []
        if spec.has_attention:
            self.split.append(q_width)
            if spec.computes_kv:
                self.split += [k_width, v_width]
        if spec.has_ssm:
            self.split += [d_inner, d_inner]
        bias = config.mamba_proj_bias
        self.in_proj = Linear(config.hidden_size, sum(self.split), bias=bias)
        if spec.has_attention:
            self.attn = AttentionBranch(config, spec)
            self.attn_norm = RMSNorm(d_inner, eps, feeds_linear=True)
        if spec.has_ssm:
            self.ssm = MambaBranch(config, spec.index)
            self.ssm_norm = RMSNorm(d_inner, eps, feeds_linear=True)
        self.out_proj = Linear(d_inner, config.hidden_size, bias=bias)

    def forward(
        self, h: Tensor, layout: SequenceLayout, shared: SharedKV | None
    ) -> tuple[Tensor, SharedKV | None]:
        parts = list(self.in_proj(h).split(self.split, dim=-1))
        if self.spec.has_attention:
            q = parts.pop(0)
            k, v = (parts.pop(0), parts.pop(0)) if self.spec.computes_kv else (None, None)
            attn_out, shared = self.attn(q, k, v, layout, shared)
            if not self.spec.has_ssm:
                return self.out_proj(self.attn_norm(attn_out)), shared
        ssm_out = self.ssm(*parts, layout)
        if not self.spec.has_attention:
            return self.out_proj(self.ssm_norm(ssm_out)), shared
        # (attn_norm(attention) + ssm_norm(ssm)) / 2, one kernel on CUDA (both norms were built
        # with config.rms_norm_eps)
        mixed = ops.mean_of_rms_norms(attn_out, ssm_out, self.attn_norm.weight, self.ssm_norm.weight,
                                      self.attn_norm.eps, ops.linear_input_dtype(attn_out))
        return self.out_proj(mixed), shared


class HymbaBlock(nn.Module):
    def __init__(self, config: HymbaConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, feeds_linear=True)
        self.mixer = HybridMixer(config, spec)
        self.pre_mlp_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self, h: Tensor, layout: SequenceLayout, shared: SharedKV | None = None
    ) -> tuple[Tensor, SharedKV | None]:
        mixed, shared = self.mixer(self.input_layernorm(h), layout, shared)
        norm = self.pre_mlp_layernorm
        # h + mixed, and its norm (in the MLP's compute dtype)
        h, normed = ops.add_rms_norm(h, mixed, norm.weight, norm.eps, ops.linear_input_dtype(h))
        return self.mlp(normed, residual=h), shared  # h: a new tensor, which the MLP may add into

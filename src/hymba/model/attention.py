"""The attention branch: RoPE, grouped K/V heads, sliding windows and cross-layer K/V sharing.

It has no parameters of its own: Q, K and V come from the hybrid mixer's fused input projection,
and its output (heads × V head dim = the Mamba inner width) goes straight to the fusion.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from ..config import HymbaConfig, LayerSpec
from .layout import SequenceLayout
from .state import SharedKV, rotate


class AttentionBranch(nn.Module):
    def __init__(self, config: HymbaConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.qk_dim = config.qk_head_dim
        self.v_dim = config.value_head_dim
        self.use_rope = config.rope

    def _heads(self, x: Tensor, heads: int, dim: int) -> Tensor:
        b, length, _ = x.shape
        return x.view(b, length, heads, dim).transpose(1, 2)

    def forward(
        self,
        q: Tensor,
        k: Tensor | None,
        v: Tensor | None,
        layout: SequenceLayout,
        shared: SharedKV | None = None,
    ) -> tuple[Tensor, SharedKV]:
        """``q``: (b, L, Hq·d_qk); ``k``/``v`` for a K/V-computing layer, else ``shared`` from the
        producer. Returns the output (b, L, Hq·d_v) and the K/V for consumers.

        Q and K get their rotary embedding here, or, at a decode step, inside the kernels that
        attend (q) and store the new K/V in the cache (k)."""
        rotary = layout.rotary if self.use_rope else None
        q = self._heads(q, self.num_heads, self.qk_dim)
        if self.spec.computes_kv:
            k = self._heads(k, self.num_kv_heads, self.qk_dim)
            v = self._heads(v, self.num_kv_heads, self.v_dim)
            if layout.state is not None:
                shared = layout.state.update_kv(self.spec, k, v, layout, rotary)
            else:
                # contiguous once here rather than in each consumer's attention (FlexAttention's
                # layout)
                shared = SharedKV(rotate(k, rotary).contiguous(), v.contiguous(), layout.positions, layout.token_valid)
        assert shared is not None, "a K/V consumer needs its producer's K/V"
        if shared.decode is not None:
            out = ops.decode_attention(q, *shared.prefix, shared.k, shared.v, shared.decode, rotary)
        else:
            out = ops.attention(
                rotate(q, rotary), shared.k, shared.v, layout.positions, shared.k_pos, self.spec.window,
                layout.num_meta, shared.k_valid, q_start=layout.start,
                # shared by the layers of one K/V group in inference; not under autograd, where
                # checkpointed layers would keep the masks alive until the backward
                masks=None if torch.is_grad_enabled() else shared.masks,
            )
        b, _, length, _ = out.shape
        return out.transpose(1, 2).reshape(b, length, self.num_heads * self.v_dim), shared

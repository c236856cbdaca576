"""FlexAttention (CUDA) for Hymba's sliding-window + meta-token mask in prefill and training.

Same semantics as :func:`hymba.ops.attention.reference.attention_mask` for self-attention over one unpadded
sequence whose keys are at positions ``offset + index`` and whose queries are the last keys.

Inference follows torch.compile's automatic dynamic shapes: the first shape is compiled for
itself (the fastest kernel); a length that differs recompiles with the sizes that changed made
dynamic (the length, and the block mask's block count once it differs too), so after at most two
such recompilations one compilation serves every length; inputs are never padded. Calls that
autograd records (training, whose rows are packed to one shape) get kernels compiled for their
exact shape, whatever ran before: the dynamic-length ones are slower. Block masks are built once
per (query and key lengths, window, meta tokens, offset) and cached. The output keeps the query's
memory layout, so a query that is a (b, L, H, d) view transposed to (b, H, L, d) gives an output
that transposes back to (b, L, H·d) without a copy; the compiled region then returns it in
(b, L, H, d) order, whose gradient arrives contiguous (returned as (b, H, L, d), the compiled
backward copied each incoming gradient to that order first). K and V are made contiguous: the
kernels compiled for dynamic lengths cannot specialise on their strides, and strided views of the
fused projection make every K/V tile load gather from rows far apart.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from ..switches import capability

# Distinct graphs one process may compile (dynamo's default is 8): masks of global and
# sliding-window layers, static and dynamic lengths, batch 1 and > 1, with and without autograd.
# Raised (never lowered) for the whole process once, at the first FlexAttention call: a
# ``config.patch`` around every call would cost host time at every layer.
RECOMPILE_LIMIT = 64
# the setting's name since torch 2.7; ``cache_size_limit`` before
_LIMIT_SETTING = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"

# Tiles by (qk head dim, v head dim, dtype) for sm_90 GPUs: inductor picks its default tiles by
# the query head's width, and for a 64-wide query head (forward 128 x 128 tiles on 4 warps) they
# leave too little shared memory and too few registers for Hymba's 128-wide value head: the
# accumulator of a 128-row tile holds 128 values of V per row. Halving the key block (and the
# backward's blocks) keeps the pipeline's stages in shared memory. Other shapes and GPUs keep the
# defaults. The "fwd_"/"bwd_" prefixes need torch >= 2.6 (the
# attention dispatch takes FlexAttention on torch >= 2.7 only).
_SM90_TILES = {
    (64, 128, torch.bfloat16): dict(
        fwd_BLOCK_M=128, fwd_BLOCK_N=64, fwd_num_stages=3, fwd_num_warps=4,
        bwd_BLOCK_M1=64, bwd_BLOCK_N1=64, bwd_BLOCK_M2=64, bwd_BLOCK_N2=64, bwd_num_stages=3, bwd_num_warps=4,
    ),
}

# Shapes (of q, k, v) that get their own exact-shape compilation when autograd records the call.
# Training packs its rows to one shape, and kernels compiled for that shape know the sequence's
# length and block count (no bounds checks, no masking of a partial last block), which the
# dynamic-length kernels must handle at run time; an exact shape also does not depend on which
# lengths ran before it. Shapes past this many share the dynamic compilation (each exact shape is
# one more compilation).
STATIC_SHAPES = 8

# torch.compile'd FlexAttention by ("exact shapes" (True: autograd) or automatic dynamic shapes
# (False: inference), output in (b, L, H, d) order): separate wrappers, so none's compilations
# serve the others' calls
_compiled: dict = {}
_static_shapes: set[tuple] = set()


def _heads_last(q: Tensor, k: Tensor, v: Tensor, **options) -> Tensor:
    """FlexAttention's output transposed to (b, Lq, Hq, d_v), for queries in that memory order."""
    return flex_attention(q, k, v, **options).transpose(1, 2)


def _flex(static: bool = False, heads_last: bool = False):
    key = static, heads_last
    if key not in _compiled:
        config = torch._dynamo.config
        setattr(config, _LIMIT_SETTING, max(getattr(config, _LIMIT_SETTING), RECOMPILE_LIMIT))
        _compiled[key] = torch.compile(_heads_last if heads_last else flex_attention, dynamic=False if static else None)
    return _compiled[key]


def _exact_shape(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether this call runs kernels compiled for its exact shape: autograd records it and its
    shape is one of the first ``STATIC_SHAPES`` such shapes."""
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return False
    shape = (tuple(q.shape), tuple(k.shape), tuple(v.shape))
    if shape not in _static_shapes and len(_static_shapes) < STATIC_SHAPES:
        _static_shapes.add(shape)
    return shape in _static_shapes


def kernel_options(q: Tensor, v: Tensor) -> dict:
    """The tiles chosen for this shape and GPU (``_SM90_TILES``), or none (inductor's defaults)."""
    if q.device.type != "cuda" or capability(q.device) != (9, 0):
        return {}
    return dict(_SM90_TILES.get((q.shape[-1], v.shape[-1], q.dtype), {}))


@lru_cache(maxsize=64)
def _block_mask(q_len: int, kv_len: int, window: int | None, num_meta: int, offset: int, device: str):
    ahead = kv_len - q_len  # query i sits at key index i + ahead

    def mask_mod(b, h, q_idx, kv_idx):
        q_at = q_idx + ahead
        causal = kv_idx <= q_at
        if window is None:
            return causal
        return causal & ((q_at - kv_idx <= window) | (kv_idx + offset < num_meta))

    return create_block_mask(mask_mod, None, None, q_len, kv_len, device=device)


def flex_attention_swa(
    q: Tensor, k: Tensor, v: Tensor, window: int | None, num_meta: int, offset: int = 0
) -> Tensor:
    """``q``: (b, Hq, Lq, d_qk); ``k``: (b, Hkv, Lk, d_qk); ``v``: (b, Hkv, Lk, d_v), any
    strides, Lq <= Lk. Key j is at position ``offset + j``; the queries are the last Lq keys'
    positions (self-attention, possibly after a prefix such as cached meta tokens). Returns
    (b, Hq, Lq, d_v) in q's memory layout."""
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"{q.shape[2]} queries over {k.shape[2]} keys: the queries must be the last keys")
    if q.stride(-1) != 1:
        q = q.contiguous()
    k, v = k.contiguous(), v.contiguous()
    mask = _block_mask(q.shape[2], k.shape[2], window, num_meta, offset, str(q.device))
    heads_last = q.stride(1) < q.stride(2)  # a (b, L, H, d) view
    out = _flex(_exact_shape(q, k, v), heads_last)(q, k, v, block_mask=mask, enable_gqa=q.shape[1] != k.shape[1],
                                                    kernel_options=kernel_options(q, v))
    return out.transpose(1, 2) if heads_last else out

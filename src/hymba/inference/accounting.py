"""How many bytes a generation cache takes: the one definition, from the layer plan.

:class:`~hymba.inference.cache.HybridCache` allocates exactly what :func:`cache_bytes` counts
(a test holds them equal), and ``hymba info``, ``hymba cache-size`` and the benchmarks all
report it. Per sequence:

- a global K/V producer keeps K/V for every real token (``max_tokens`` slots);
- a sliding-window K/V producer keeps a ring of ``window + 1`` slots (the current token and the
  ``window`` before it) and the position each slot holds (int64), whatever the length;
- a K/V consumer keeps nothing;
- a layer with an SSM branch keeps its SSM state (d_inner x d_state) and conv inputs
  (d_inner x d_conv).

The meta tokens' K/V (``meta_kv``) do not depend on the input: one copy per model serves every
request, so it is listed apart and not in ``total``.
"""

from __future__ import annotations

from ..config import HymbaConfig

POSITION_BYTES = 8  # int64 position of each sliding-window ring slot


def cache_bytes(
    config: HymbaConfig,
    max_tokens: int,
    batch: int = 1,
    dtype_bytes: int = 2,
    ssm_dtype_bytes: int | None = None,
) -> dict[str, int]:
    """Bytes of a cache for ``batch`` sequences of up to ``max_tokens`` real tokens, by part:
    ``global_kv``, ``swa_kv``, ``swa_positions``, ``ssm_state``, ``conv_state``, ``total`` (their
    sum) and ``meta_kv`` (once per model, not in the total). Values take ``dtype_bytes`` each, the
    SSM state ``ssm_dtype_bytes`` (default: the same)."""
    if max_tokens < 1 or batch < 1:
        raise ValueError("a cache needs max_tokens >= 1 and batch >= 1")
    ssm_dtype_bytes = dtype_bytes if ssm_dtype_bytes is None else ssm_dtype_bytes
    kv_per_token = config.num_key_value_heads * (config.qk_head_dim + config.value_head_dim) * dtype_bytes
    parts = dict.fromkeys(("global_kv", "swa_kv", "swa_positions", "ssm_state", "conv_state"), 0)
    meta = 0
    for spec in config.layer_plan():
        if spec.computes_kv:
            if spec.window is None:
                parts["global_kv"] += max_tokens * kv_per_token
            else:
                parts["swa_kv"] += (spec.window + 1) * kv_per_token
                parts["swa_positions"] += (spec.window + 1) * POSITION_BYTES
            meta += config.num_memory_tokens * kv_per_token
        if spec.has_ssm:
            parts["ssm_state"] += config.d_inner * config.mamba_d_state * ssm_dtype_bytes
            parts["conv_state"] += config.d_inner * config.mamba_d_conv * dtype_bytes
    out = {k: v * batch for k, v in parts.items()}
    out["total"] = sum(out.values())
    out["meta_kv"] = meta
    return out


def growth_per_token(config: HymbaConfig, dtype_bytes: int = 2) -> int:
    """Bytes a sequence's cache grows by per token of capacity (the global layers' K/V)."""
    return cache_bytes(config, 2, dtype_bytes=dtype_bytes)["total"] - cache_bytes(config, 1, dtype_bytes=dtype_bytes)["total"]


"""Analytic cache accounting from the layer plan (bytes of K/V and SSM/conv state per sequence).

Meta-token K/V are listed apart: they do not depend on the input, so one copy per model serves
every request.
"""

from __future__ import annotations

from .config import HymbaConfig


def cache_bytes(config: HymbaConfig, seq_len: int, bytes_per_value: int = 2) -> dict[str, int]:
    """Cache bytes for one sequence of ``seq_len`` real tokens, by part.

    Global layers keep K/V for every token; sliding-window layers keep at most ``window`` past
    tokens; K/V-consumer layers keep nothing; every SSM layer keeps its state (d_inner × d_state)
    and its conv inputs (d_inner × d_conv).
    """
    kv_per_token = config.num_key_value_heads * (config.qk_head_dim + config.value_head_dim)
    parts = {"global_kv": 0, "swa_kv": 0, "meta_kv": 0, "ssm_state": 0, "conv_state": 0}
    for spec in config.layer_plan():
        if spec.computes_kv:
            tokens = seq_len if spec.window is None else min(seq_len, spec.window)
            parts["global_kv" if spec.window is None else "swa_kv"] += tokens * kv_per_token
            parts["meta_kv"] += config.num_memory_tokens * kv_per_token
        if spec.has_ssm:
            parts["ssm_state"] += config.d_inner * config.mamba_d_state
            parts["conv_state"] += config.d_inner * config.mamba_d_conv
    out = {k: v * bytes_per_value for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def growth_per_token(config: HymbaConfig, bytes_per_value: int = 2) -> int:
    """Bytes the cache grows by per token once every sliding window is full (global layers)."""
    past = max([s.window or 0 for s in config.layer_plan()] + [0]) + 1
    return (cache_bytes(config, past + 1, bytes_per_value)["total"]
            - cache_bytes(config, past, bytes_per_value)["total"])


def transformer_cache_bytes(
    layers: int, kv_heads: int, head_dim: int, seq_len: int, bytes_per_value: int = 2
) -> int:
    """K/V cache of a plain transformer (the paper's convention for its baselines)."""
    return 2 * layers * kv_heads * head_dim * seq_len * bytes_per_value

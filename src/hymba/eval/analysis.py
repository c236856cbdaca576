"""Meta-token and branch analysis (paper Fig. 7 and Fig. 12) by an instrumented forward pass.

Two measurements on one unpadded sequence, neither of which changes the model's output:

* **attention mass shares**: while the analysis runs, the attention op the attention branches
  call (``hymba.ops.attention``) is replaced by an explicit-softmax version that also records,
  per layer and averaged over heads and real-token queries, the share of attention probability
  on the meta tokens, on the first real token (usually BOS), on the query itself and on all
  other tokens;
* **branch magnitudes**: forward hooks on each hybrid mixer's attention and SSM branches record
  the mean absolute output over the real tokens, before and after the branch's output norm
  (applied in the hook), with the mean absolute norm weight (the paper's β gates).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from .. import ops


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ/√d + mask) v with grouped K/V heads; returns (output, probabilities)."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return (probs @ v.float()).to(q.dtype), probs


def attention_shares(probs: Tensor, num_meta: int) -> dict[str, float]:
    """Shares of attention mass of the real-token queries (b, heads, L, L) on meta tokens, the
    first real token, the query itself and other tokens, averaged over queries and heads. The
    first real token's attention to itself counts as 'self'."""
    p = probs[:, :, num_meta:]  # real-token queries only
    meta = p[..., :num_meta].sum(-1)
    self_ = p[..., num_meta:].diagonal(dim1=-2, dim2=-1)
    first = p[..., num_meta].clone()
    first[..., 0] = 0.0  # query 0 is the first token: already counted as self
    other = 1.0 - meta - self_ - first
    return {name: float(x.mean()) for name, x in
            (("meta", meta), ("first", first), ("self", self_), ("other", other.clamp(min=0)))}


@contextmanager
def instrument(model: torch.nn.Module) -> Iterator[dict[int, dict[str, Any]]]:
    """Record attention shares and branch magnitudes per layer while the context is open."""
    records: dict[int, dict[str, Any]] = {}
    current: list[int] = [-1]
    hooks = []
    num_meta = model.config.num_memory_tokens
    original = ops.attention

    def recording_attention(q, k, v, q_pos, k_pos, window, meta, key_valid=None, q_start=None, masks=None):
        mask = ops.attention_mask(q_pos, k_pos, window, meta, key_valid)  # (built per layer: probes are rare)
        out, probs = explicit_attention(q, k, v, mask)
        records.setdefault(current[0], {})["attention_share"] = attention_shares(probs.detach(), meta)
        return out

    def magnitude(layer: int, branch: str, norm: torch.nn.Module):
        """Hook on a branch: its output's magnitude, and that of the output through its norm
        (the mixer may fuse the norms, so they are applied here rather than hooked)."""
        @torch.no_grad()
        def hook(module, inputs, output):
            x = output[0] if isinstance(output, tuple) else output
            entry = records.setdefault(layer, {}).setdefault("branch_magnitude", {}).setdefault(branch, {})
            for stage, value in (("before_norm", x), ("after_norm", norm(x))):
                entry[stage] = float(value[:, num_meta:].float().abs().mean())
        return hook

    for i, layer in enumerate(model.layers):
        mixer = layer.mixer
        hooks.append(layer.register_forward_pre_hook(lambda *_, i=i: current.__setitem__(0, i)))
        for branch, inner, norm in (("attention", "attn", "attn_norm"), ("ssm", "ssm", "ssm_norm")):
            if hasattr(mixer, inner):
                hooks.append(getattr(mixer, inner).register_forward_hook(magnitude(i, branch, getattr(mixer, norm))))
    ops.attention = recording_attention
    try:
        yield records
    finally:
        ops.attention = original
        for h in hooks:
            h.remove()


@torch.no_grad()
def analyze(model: torch.nn.Module, input_ids: Tensor) -> dict[str, Any]:
    """Per-layer attention shares and branch magnitudes for one sequence ``(1, n)``."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError("analyze takes one sequence of shape (1, n)")
    with instrument(model) as records:
        model(input_ids.to(next(model.parameters()).device))
    layers = []
    for i, spec in enumerate(model.config.layer_plan()):
        rec = records.get(i, {})
        mixer = model.layers[i].mixer
        mags = rec.get("branch_magnitude", {})
        for branch, norm in (("attention", "attn_norm"), ("ssm", "ssm_norm")):
            if branch in mags:
                mags[branch]["norm_weight"] = float(getattr(mixer, norm).weight.float().abs().mean())
        layers.append({"layer": i, "kind": spec.kind, "attention_share": rec.get("attention_share"),
                       "branch_magnitude": mags})
    summary: dict[str, Any] = {"tokens": int(input_ids.shape[1]),
                               "num_meta": model.config.num_memory_tokens, "layers": layers}
    with_attn = [r["attention_share"] for r in layers if r["attention_share"]]
    if with_attn:
        summary["mean_attention_share"] = {k: sum(r[k] for r in with_attn) / len(with_attn)
                                           for k in with_attn[0]}
    both = [r["branch_magnitude"] for r in layers if len(r["branch_magnitude"]) == 2]
    if both:
        summary["ssm_to_attention_magnitude_ratio"] = sum(
            m["ssm"]["before_norm"] / max(m["attention"]["before_norm"], 1e-12) for m in both) / len(both)
    return summary

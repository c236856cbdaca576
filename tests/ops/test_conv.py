"""Causal depthwise conv: the batched form, its state, and the one-step update agree."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hymba.ops import causal_conv1d, causal_conv1d_update


def naive(x, w, b):
    L, K = x.shape[1], w.shape[-1]
    out = torch.zeros_like(x)
    for t in range(L):
        for k in range(K):
            src = t - K + 1 + k
            if src >= 0:
                out[:, t] += w[:, k] * x[:, src]
    return F.silu(out + b)


def test_conv_matches_definition_and_update_steps():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 9, 5, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    y, state = causal_conv1d(x, w, b)
    torch.testing.assert_close(y, naive(x, w, b))
    torch.testing.assert_close(state, x[:, -4:].transpose(1, 2))
    # prefix + one step at a time == one pass
    y1, s = causal_conv1d(x[:, :3], w, b)
    steps = [causal_conv1d_update(x[:, t], s, w, b) for t in range(3, 9)]
    torch.testing.assert_close(torch.cat([y1, torch.stack(steps, 1)], 1), y)
    torch.testing.assert_close(s, state)


def test_short_sequences_and_initial_state():
    torch.manual_seed(1)
    x, w = torch.randn(1, 2, 3), torch.randn(3, 4)
    y, state = causal_conv1d(x, w, None, activation=False)
    assert state.shape == (1, 3, 4) and torch.equal(state[..., :2], torch.zeros(1, 3, 2))
    full, _ = causal_conv1d(torch.cat([x, x], 1), w, None, activation=False)
    cont, _ = causal_conv1d(x, w, None, initial_state=state, activation=False)
    torch.testing.assert_close(cont, full[:, 2:])

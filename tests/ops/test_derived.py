"""Derived tensors (padded weights, A = -exp(A_log)) are kept only while that is safe."""

from __future__ import annotations

import torch

from hymba.ops import derived


def test_kept_without_autograd_and_redone_after_an_in_place_change():
    p = torch.nn.Parameter(torch.randn(4, 3))
    calls = []

    def make(t):
        calls.append(1)
        return -torch.exp(t)

    with torch.no_grad():
        first = derived(p, "A", make)
        assert derived(p, "A", make) is first and len(calls) == 1
        p.mul_(2)
        again = derived(p, "A", make)
    assert len(calls) == 2 and torch.equal(again, -torch.exp(p.detach()))
    assert derived(p, "other", lambda t: t + 1) is not again  # names are separate entries


def test_autograd_gets_a_fresh_result_with_its_graph():
    p = torch.nn.Parameter(torch.randn(3))
    with torch.no_grad():
        derived(p, "A", lambda t: -torch.exp(t))
    out = derived(p, "A", lambda t: -torch.exp(t))
    assert out.requires_grad
    out.sum().backward()
    torch.testing.assert_close(p.grad, -torch.exp(p.detach()))


def test_inference_tensors_are_not_cached():
    with torch.inference_mode():
        t = torch.randn(3)
        assert derived(t, "A", lambda x: x * 2) is not derived(t, "A", lambda x: x * 2)

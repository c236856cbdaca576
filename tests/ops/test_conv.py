"""Causal depthwise conv: the batched form, its state, and the one-step update agree; the Triton
kernels (sequence, backward, one step) against the references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hymba.ops import causal_conv1d, causal_conv1d_update
from hymba.ops.conv.reference import causal_conv1d_update_reference


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


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [1, 3, 37, 200])
@pytest.mark.parametrize("with_state,with_bias,activation", [(False, True, True), (True, True, True),
                                                            (True, False, False)])
def test_triton_matches_reference(dtype, length, with_state, with_bias, activation, triton_device):
    from hymba.ops.conv.reference import causal_conv1d_reference
    from hymba.ops.conv.triton import causal_conv1d_triton

    g = torch.Generator().manual_seed(length)
    r = lambda *s: torch.randn(*s, generator=g).to(triton_device)  # noqa: E731
    channels = 150
    # x as a column slice of a wider projection, like the SSM branch's input
    x = r(2, length, 2 * channels)[..., :channels].to(dtype)
    w, b = r(channels, 4).to(dtype), (r(channels).to(dtype) if with_bias else None)
    state = r(2, channels, 4).to(dtype) if with_state else None  # the cache keeps the model's dtype
    got, got_state = causal_conv1d_triton(x, w, b, state, activation)
    want, want_state = causal_conv1d_reference(x, w, b, state, activation)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got_state, want_state, rtol=0, atol=0)
    if dtype == torch.bfloat16:
        # what the reference computes on a GPU: float32 sums of the bf16 values, rounded once (a
        # CPU's bf16 convolution may round partial sums too); then SiLU, rounded again
        up = lambda t: None if t is None else t.to(dtype).float()  # noqa: E731
        conv, _ = causal_conv1d_reference(up(x), up(w), up(b), up(state), activation=False)
        want = conv.to(dtype)
        if activation:
            want = torch.nn.functional.silu(want.float()).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2**-6
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("x_dtype,w_dtype,tol", [(torch.float32, torch.float32, 1e-4),
                                                 (torch.bfloat16, torch.float32, 2e-2),  # autocast training
                                                 (torch.bfloat16, torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("length", [4, 37, 200])
@pytest.mark.parametrize("with_bias,activation,use_final", [(True, True, False), (False, False, True),
                                                            (True, True, True)])
def test_triton_backward_matches_reference(x_dtype, w_dtype, tol, length, with_bias, activation, use_final,
                                           triton_device):
    """Gradients of x, the weight and the bias (and of x through the returned final state)
    against the reference in float64."""
    from hymba.ops.conv.reference import causal_conv1d_reference
    from hymba.ops.conv.triton import causal_conv1d_train

    channels = 150
    x = torch.randn(2, length, 2 * channels, device=triton_device)[..., :channels].to(x_dtype)
    w = torch.randn(channels, 4, device=triton_device).to(w_dtype)
    b = torch.randn(channels, device=triton_device).to(w_dtype) if with_bias else None
    leaves = [t for t in (x, w, b) if t is not None]
    fast = [t.detach().clone().requires_grad_(True) for t in leaves]
    exact = [t.detach().double().requires_grad_(True) for t in leaves]

    def run(conv, x, w, b=None):
        y, final = conv(x, w, b, activation=activation)
        return y, final

    y, final = run(causal_conv1d_train, *fast)
    y_ref, final_ref = run(causal_conv1d_reference, *exact)
    assert y.dtype == x_dtype and final.dtype == x_dtype
    torch.testing.assert_close(y.double(), y_ref, rtol=tol, atol=tol)
    dy = torch.randn(y.shape, device=triton_device)
    dfinal = torch.randn(final.shape, device=triton_device)
    outs, grads = [(y, y_ref)], [dy]
    if use_final:
        outs.append((final, final_ref))
        grads.append(dfinal)
    torch.autograd.backward([o for o, _ in outs], [g.to(o.dtype) for g, (o, _) in zip(grads, outs)])
    torch.autograd.backward([r for _, r in outs], [g.double() for g in grads])
    for i, (got, want) in enumerate(zip(fast, exact)):
        assert got.grad.dtype == got.dtype, f"input {i}"
        scale = max(1.0, want.grad.abs().max().item())
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=tol, atol=tol * scale, msg=f"input {i}")


@pytest.mark.gpu
@pytest.mark.parametrize("tile", [(8, 256, 4, 4), (64, 64, 8, 1024), (16, 128, 16, 2)])
def test_triton_backward_tiles(tile, triton_device, monkeypatch):
    """Other backward tiles (as ``conv_gpu.py --bwd-sweep`` times them) and time segments of
    several blocks (few programs; the last segment cut short) give the same gradients."""
    from hymba.ops.conv import triton as conv_triton

    for name, value in zip(("BWD_BLOCK_T", "BWD_BLOCK_C", "BWD_WARPS", "GRAD_PROGRAMS"), tile):
        monkeypatch.setattr(conv_triton, name, value)
    test_triton_backward_matches_reference(torch.float32, torch.float32, 1e-4, 200, True, True, True, triton_device)


@pytest.mark.gpu
def test_triton_backward_of_an_input_with_strided_channels(triton_device):
    """An input whose channels are not adjacent in memory gets the reference's gradients."""
    from hymba.ops.conv.reference import causal_conv1d_reference
    from hymba.ops.conv.triton import causal_conv1d_train

    torch.manual_seed(1)
    base = torch.randn(2, 50, 40, 2, device=triton_device)
    w, b = torch.randn(40, 4, device=triton_device), torch.randn(40, device=triton_device)
    dy = torch.randn(2, 50, 40, device=triton_device)
    grads = []
    for conv in (causal_conv1d_train, causal_conv1d_reference):
        x = base[..., 0].detach().requires_grad_(True)  # channel stride 2
        assert x.stride(-1) == 2
        leaves = [x] + [t.detach().clone().requires_grad_(True) for t in (w, b)]
        conv(*leaves)[0].backward(dy)
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_dispatch_under_autograd(triton_device, monkeypatch):
    """With autograd recording: the Triton function from a zero state over at least a kernel's
    steps, the reference otherwise (a given initial state, or a shorter sequence)."""
    from hymba.ops.conv import causal_conv1d

    monkeypatch.setenv("HYMBA_TRITON", "force")
    w = torch.randn(8, 4, device=triton_device, requires_grad=True)
    x = torch.randn(1, 6, 8, device=triton_device)
    assert "_CausalConv" in type(causal_conv1d(x, w)[0].grad_fn).__name__
    assert "_CausalConv" not in type(causal_conv1d(x[:, :3], w)[0].grad_fn).__name__
    state = torch.zeros(1, 8, 4, device=triton_device)
    assert "_CausalConv" not in type(causal_conv1d(x, w, None, state)[0].grad_fn).__name__


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,d,k,bias", [(1, 64, 4, True), (3, 100, 4, False), (2, 7, 3, True)])
def test_triton_update_matches_reference(b, d, k, bias, dtype, triton_device):
    from hymba.ops.conv.triton import causal_conv1d_update_triton

    dev = triton_device
    wide = torch.randn(b, 3, d, device=dev).to(dtype)
    x = wide[:, 1]  # strided, as the split of the fused projection gives it
    weight = torch.randn(d, k, device=dev).to(dtype)
    b_ = torch.randn(d, device=dev).to(dtype) if bias else None
    state = torch.randn(b, d, k, device=dev).to(dtype)
    ref_state = state.clone()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for _ in range(3):  # several steps: the shift must move every slot
        got = causal_conv1d_update_triton(x, state, weight, b_)
        want = causal_conv1d_update_reference(x, ref_state, weight, b_)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        torch.testing.assert_close(state, ref_state)
        x = torch.randn(b, d, device=dev).to(dtype)

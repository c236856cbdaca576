"""RMSNorm: the fused Triton kernel against the reference, and the dispatch rules."""

from __future__ import annotations

import pytest
import torch

from hymba.ops.norm import rms_norm, rms_norm_parts, rms_norm_reference


@pytest.mark.gpu
@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.bfloat16, torch.float32), (torch.float16, torch.float16)])
@pytest.mark.parametrize("shape", [(3, 5, 64), (7, 3200), (2, 1, 16), (1, 1600), (0, 24)])
def test_triton_matches_reference(shape, x_dtype, w_dtype, triton_device):
    from hymba.ops.norm.triton import rms_norm_triton

    device = triton_device
    x = (torch.randn(shape, device=device) * 3).to(x_dtype)
    w = (torch.rand(shape[-1], device=device) + 0.5).to(w_dtype)
    got, want = rms_norm_triton(x, w, 1e-6), rms_norm_reference(x, w, 1e-6)
    assert got.dtype == want.dtype and got.shape == want.shape
    # Same roundings; rsqrt's last bit and the summation order may differ, and Triton's CPU
    # interpreter rounds to bfloat16 by truncation: allow two bf16 steps where x is bf16.
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2**-6}[x_dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.gpu
def test_triton_strided_rows(triton_device):
    from hymba.ops.norm.triton import rms_norm_triton

    device = triton_device
    x = torch.randn(4, 10, 48, device=device)[:, ::2, :40]  # rows not contiguous with each other
    w = torch.rand(40, device=device)
    torch.testing.assert_close(rms_norm_triton(x, w, 1e-5), rms_norm_reference(x, w, 1e-5))


def test_dispatch_keeps_autograd_on_the_reference():
    x = torch.randn(2, 3, 8, requires_grad=True)
    w = torch.rand(8, requires_grad=True)
    y = rms_norm(x, w, 1e-6)
    y.sum().backward()
    assert x.grad is not None and w.grad is not None
    torch.testing.assert_close(y, rms_norm_reference(x, w, 1e-6))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sizes", [(100, 16, 16), (4, 8, 8), (3, 1, 5)])
def test_triton_parts_match_reference(sizes, dtype, triton_device):
    from hymba.ops.norm.triton import rms_norm_parts_triton

    x = (torch.randn(3, 2, sum(sizes), device=triton_device) * 2).to(dtype)
    weights = tuple((torch.rand(s, device=triton_device) + 0.5).to(dtype) for s in sizes)
    got = rms_norm_parts_triton(x, sizes, weights, 1e-6)
    want = [rms_norm_reference(p, w, 1e-6) for p, w in zip(x.split(list(sizes), -1), weights)]
    tol = 1e-5 if dtype == torch.float32 else 2**-6
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


def test_parts_dispatch_on_cpu_is_the_reference():
    x = torch.randn(2, 12)
    weights = (torch.rand(4), torch.rand(4), torch.rand(4))
    for got, part, w in zip(rms_norm_parts(x, (4, 4, 4), weights, 1e-6), x.split(4, -1), weights):
        torch.testing.assert_close(got, rms_norm_reference(part, w, 1e-6))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                           (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("shape", [(3, 5, 64), (2, 1600), (1, 1, 40), (0, 16)])
def test_triton_add_rms_norm_matches_reference(shape, dtype, w_dtype, triton_device):
    from hymba.ops.norm import add_rms_norm_reference
    from hymba.ops.norm.triton import add_rms_norm_triton

    x = (torch.randn(shape, device=triton_device) * 3).to(dtype)
    delta = torch.randn(shape, device=triton_device).to(dtype)
    w = (torch.rand(shape[-1], device=triton_device) + 0.5).to(w_dtype)
    (total, normed), (want_total, want_normed) = add_rms_norm_triton(x, delta, w, 1e-6), add_rms_norm_reference(x, delta, w, 1e-6)
    assert total.dtype == want_total.dtype and normed.dtype == want_normed.dtype and normed.shape == shape
    tol = 1e-5 if dtype == torch.float32 else 2**-6
    torch.testing.assert_close(total, want_total, rtol=tol, atol=tol)
    torch.testing.assert_close(normed, want_normed, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                           (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("shape", [(2, 3, 3200), (1, 1, 48), (0, 8)])
def test_triton_mean_of_rms_norms_matches_reference(shape, dtype, w_dtype, triton_device):
    from hymba.ops.norm import mean_of_rms_norms_reference
    from hymba.ops.norm.triton import mean_of_rms_norms_triton

    a = (torch.randn(shape, device=triton_device) * 5).to(dtype)
    b = (torch.randn(shape, device=triton_device) / 5).to(dtype)
    wa, wb = ((torch.rand(shape[-1], device=triton_device) + 0.5).to(w_dtype) for _ in range(2))
    got, want = mean_of_rms_norms_triton(a, b, wa, wb, 1e-6), mean_of_rms_norms_reference(a, b, wa, wb, 1e-6)
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = 1e-5 if dtype == torch.float32 else 2**-6
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("x_dtype,w_dtype,out_dtype", [
    (torch.float32, torch.float32, torch.bfloat16),  # stored in bf16 by the kernel
    (torch.bfloat16, torch.float32, torch.bfloat16),  # autocast: bf16 branch outputs, float32 weights
    (torch.bfloat16, torch.bfloat16, torch.float16),  # a bf16 result, cast afterwards
])
def test_triton_norms_give_out_dtype_as_a_cast_afterwards(x_dtype, w_dtype, out_dtype, triton_device):
    """``out_dtype`` gives the values of the result cast afterwards (as autocast casts a linear
    layer's input); the backward gives the same gradients as through that cast."""
    from hymba.ops.norm import triton as nt

    torch.manual_seed(0)
    x, d = ((torch.randn(3, 5, 200, device=triton_device) * 3).to(x_dtype) for _ in range(2))
    w, w2 = ((torch.rand(200, device=triton_device) + 0.5).to(w_dtype) for _ in range(2))
    # Triton's CPU interpreter rounds its stores to bf16 by truncation: allow one step there
    exact = dict(rtol=0, atol=0) if triton_device == "cuda" else dict(rtol=2**-7, atol=1e-6)
    cases = [(lambda o, *t: nt.rms_norm_train(*t, 1e-6, o), [x, w]),
             (lambda o, *t: nt.add_rms_norm_train(*t, 1e-6, o)[1], [x, d, w]),
             (lambda o, *t: nt.mean_of_rms_norms_train(*t, 1e-6, o), [x, d, w, w2])]
    for fn, inputs in cases:
        ins = [[t.detach().clone().requires_grad_(True) for t in inputs] for _ in range(2)]
        got, want = fn(out_dtype, *ins[0]), fn(None, *ins[1]).to(out_dtype)
        assert got.dtype == out_dtype
        torch.testing.assert_close(got, want, **exact)
        dy = torch.randn(got.shape, device=triton_device).to(out_dtype)
        got.backward(dy)
        want.backward(dy)
        for a, b in zip(*ins):
            torch.testing.assert_close(a.grad, b.grad, **exact)


def test_out_dtype_casts_on_the_references():
    from hymba.ops.norm import add_rms_norm, linear_input_dtype, mean_of_rms_norms

    x, w = torch.randn(2, 8), torch.rand(8)
    assert rms_norm(x, w, 1e-6, torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(rms_norm(x, w, 1e-6, torch.bfloat16), rms_norm(x, w, 1e-6).bfloat16())
    total, normed = add_rms_norm(x, x, w, 1e-6, torch.bfloat16)
    assert (total.dtype, normed.dtype) == (torch.float32, torch.bfloat16)
    assert mean_of_rms_norms(x, x, w, w, 1e-6, torch.bfloat16).dtype == torch.bfloat16
    assert linear_input_dtype(x) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear_input_dtype(x) == torch.bfloat16


def test_fused_norms_keep_autograd_and_mixed_dtypes_on_the_references():
    from hymba.ops.norm import add_rms_norm, mean_of_rms_norms

    x, d = torch.randn(2, 8, requires_grad=True), torch.randn(2, 8, dtype=torch.bfloat16)
    w = torch.rand(8, requires_grad=True)
    total, normed = add_rms_norm(x, d, w, 1e-6)  # fp32 residual + bf16 update, as under autocast
    assert total.dtype == torch.float32
    normed.sum().backward()
    assert x.grad is not None and w.grad is not None
    a = torch.randn(3, 8, requires_grad=True)
    mean_of_rms_norms(a, torch.randn(3, 8), w, w * 2, 1e-6).sum().backward()
    assert a.grad is not None


def _check_grads(fast, reference, inputs: list[torch.Tensor], tol: float) -> None:
    """Gradients of ``fast`` (on the inputs as given) against ``reference`` in float64, for one
    random upstream gradient per output; each gradient in its input's dtype."""
    fast_in = [t.detach().clone().requires_grad_(True) for t in inputs]
    exact_in = [t.detach().double().requires_grad_(True) for t in inputs]
    fast_out, exact_out, same_dtypes = fast(*fast_in), reference(*exact_in), reference(*inputs)
    if isinstance(fast_out, torch.Tensor):
        fast_out, exact_out, same_dtypes = (fast_out,), (exact_out,), (same_dtypes,)
    upstream = [torch.randn(o.shape, device=o.device) for o in fast_out]
    for out, want, like in zip(fast_out, exact_out, same_dtypes):
        assert out.dtype == like.dtype and out.shape == want.shape
        torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol * max(1.0, _largest(want)))
    torch.autograd.backward(fast_out, [u.to(o.dtype) for u, o in zip(upstream, fast_out)])
    torch.autograd.backward(exact_out, [u.double() for u in upstream])
    for i, (got, want) in enumerate(zip(fast_in, exact_in)):
        if want.grad is None:  # not on the path to the outputs used
            assert got.grad is None or not got.grad.any(), f"input {i}"
            continue
        assert got.grad is not None and got.grad.dtype == got.dtype, f"input {i}"
        scale = max(1e-3, _largest(want.grad))
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=tol, atol=tol * scale, msg=f"input {i}")


def _largest(t: torch.Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.0


# (x dtype, weight dtype, tolerance): float32; bf16 activations with float32 weights (autocast
# training); bf16 throughout
_TRAIN_DTYPES = [(torch.float32, torch.float32, 1e-4), (torch.bfloat16, torch.float32, 2e-2),
                 (torch.bfloat16, torch.bfloat16, 3e-2)]


@pytest.mark.gpu
@pytest.mark.parametrize("x_dtype,w_dtype,tol", _TRAIN_DTYPES)
@pytest.mark.parametrize("shape", [(2, 37, 200), (3, 1600), (1, 5, 24), (0, 16)])
def test_triton_rms_norm_backward_matches_reference(shape, x_dtype, w_dtype, tol, triton_device):
    from hymba.ops.norm.triton import rms_norm_train

    x = (torch.randn(shape, device=triton_device) * 3).to(x_dtype)
    w = (torch.rand(shape[-1], device=triton_device) + 0.5).to(w_dtype)
    _check_grads(lambda x, w: rms_norm_train(x, w, 1e-6), lambda x, w: rms_norm_reference(x, w, 1e-6), [x, w], tol)


@pytest.mark.gpu
@pytest.mark.parametrize("x_dtype,w_dtype,tol", _TRAIN_DTYPES)
@pytest.mark.parametrize("sizes", [(100, 16, 16), (3, 1, 5)])
def test_triton_rms_norm_parts_backward_matches_reference(sizes, x_dtype, w_dtype, tol, triton_device):
    from hymba.ops.norm.triton import rms_norm_parts_train

    # a strided view (the x projection's padded output), as the SSM branch passes it
    x = (torch.randn(2, 41, sum(sizes) + 4, device=triton_device) * 2).to(x_dtype)[..., : sum(sizes)]
    weights = [(torch.rand(s, device=triton_device) + 0.5).to(w_dtype) for s in sizes]

    def fast(x, *w):
        return rms_norm_parts_train(x, sizes, tuple(w), 1e-6)

    def reference(x, *w):
        return tuple(rms_norm_reference(p, wi, 1e-6) for p, wi in zip(x.split(list(sizes), -1), w))

    _check_grads(fast, reference, [x, *weights], tol)


@pytest.mark.gpu
@pytest.mark.parametrize("x_dtype,delta_dtype,w_dtype,tol", [
    (torch.float32, torch.float32, torch.float32, 1e-4),
    (torch.float32, torch.bfloat16, torch.float32, 1e-2),  # autocast: fp32 residual + bf16 update
    (torch.bfloat16, torch.bfloat16, torch.bfloat16, 3e-2),
])
@pytest.mark.parametrize("shape", [(2, 37, 200), (1, 1600), (0, 8)])
def test_triton_add_rms_norm_backward_matches_reference(shape, x_dtype, delta_dtype, w_dtype, tol, triton_device):
    from hymba.ops.norm import add_rms_norm_reference
    from hymba.ops.norm.triton import add_rms_norm_train

    x = (torch.randn(shape, device=triton_device) * 3).to(x_dtype)
    delta = torch.randn(shape, device=triton_device).to(delta_dtype)
    w = (torch.rand(shape[-1], device=triton_device) + 0.5).to(w_dtype)
    _check_grads(lambda *t: add_rms_norm_train(*t, 1e-6), lambda *t: add_rms_norm_reference(*t, 1e-6),
                 [x, delta, w], tol)


@pytest.mark.gpu
def test_triton_add_rms_norm_backward_with_one_output_used(triton_device):
    from hymba.ops.norm import add_rms_norm_reference
    from hymba.ops.norm.triton import add_rms_norm_train

    x, d = (torch.randn(3, 40, device=triton_device) for _ in range(2))
    w = torch.rand(40, device=triton_device) + 0.5
    for used in (0, 1):
        _check_grads(lambda *t, used=used: add_rms_norm_train(*t, 1e-6)[used],
                     lambda *t, used=used: add_rms_norm_reference(*t, 1e-6)[used], [x, d, w], 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("x_dtype,w_dtype,tol", _TRAIN_DTYPES)
@pytest.mark.parametrize("shape", [(2, 37, 200), (1, 3200), (0, 8)])
def test_triton_mean_of_rms_norms_backward_matches_reference(shape, x_dtype, w_dtype, tol, triton_device):
    from hymba.ops.norm import mean_of_rms_norms_reference
    from hymba.ops.norm.triton import mean_of_rms_norms_train

    a = (torch.randn(shape, device=triton_device) * 5).to(x_dtype)
    b = (torch.randn(shape, device=triton_device) / 5).to(x_dtype)
    wa, wb = ((torch.rand(shape[-1], device=triton_device) + 0.5).to(w_dtype) for _ in range(2))
    _check_grads(lambda *t: mean_of_rms_norms_train(*t, 1e-6), lambda *t: mean_of_rms_norms_reference(*t, 1e-6),
                 [a, b, wa, wb], tol)


@pytest.mark.gpu
def test_dispatch_runs_the_backward_kernels_under_autograd(triton_device, monkeypatch):
    """With autograd recording, the public functions take the Triton functions (their grad_fn)."""
    from hymba.ops.norm import add_rms_norm, mean_of_rms_norms

    monkeypatch.setenv("HYMBA_TRITON", "force")
    x = torch.randn(4, 32, device=triton_device, requires_grad=True)
    w = torch.rand(32, device=triton_device, requires_grad=True)
    assert "_NormParts" in type(rms_norm(x, w, 1e-6).grad_fn).__name__
    assert "_NormParts" in type(rms_norm_parts(x, (8, 8, 16), (w[:8], w[8:16], w[16:]), 1e-6)[0].grad_fn.next_functions[0][0]).__name__
    assert "_AddRMSNorm" in type(add_rms_norm(x, x.detach().bfloat16(), w, 1e-6)[1].grad_fn).__name__
    assert "_MeanOfNorms" in type(mean_of_rms_norms(x, x * 2, w, w, 1e-6).grad_fn).__name__

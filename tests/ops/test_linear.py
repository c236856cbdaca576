"""Decode-step linear layers: the Triton matrix-vector and tensor-core kernels against F.linear,
and the dispatch between them and cuBLAS."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from hymba.ops.linear import kernel_for, linear
from hymba.ops.swiglu import silu_mul, swiglu

linear_module = importlib.import_module("hymba.ops.linear")  # the module (hymba.ops.linear is also a function)

# (leading shape of x, in features, out features): one to four rows, widths that are and are not
# multiples of the column block, fewer features than programs, one feature
SHAPES = [((1,), 1600, 968), ((2, 1), 100, 320), ((3,), 300, 37), ((4, 1), 64, 1), ((1, 1), 5, 16)]


def _tolerance(dtype: torch.dtype) -> dict:
    # the same float32 sums in another order; bf16 outputs may then round one step apart
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2**-7, atol=2**-7)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead,k,n", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_triton_linear_matches_f_linear(lead, k, n, bias, dtype, triton_device):
    from hymba.ops.linear.triton import linear_triton

    x = torch.randn(*lead, k, device=triton_device).to(dtype)
    w = (torch.randn(n, k, device=triton_device) / k**0.5).to(dtype)
    b = torch.randn(n, device=triton_device).to(dtype) if bias else None
    got = linear_triton(x, w, b)
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert got.shape == (*lead, n) and got.dtype == dtype
    torch.testing.assert_close(got.double(), want, **_tolerance(dtype))


@pytest.mark.gpu
def test_triton_linear_strided_rows(triton_device):
    from hymba.ops.linear.triton import linear_triton

    x = torch.randn(2, 3, 96, device=triton_device)[:, 1, :80]  # rows 288 elements apart
    w = torch.randn(24, 80, device=triton_device)
    torch.testing.assert_close(linear_triton(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_triton_linear_no_rows_or_features(triton_device):
    from hymba.ops.linear.triton import linear_triton

    w = torch.randn(8, 16, device=triton_device)
    assert linear_triton(torch.randn(0, 16, device=triton_device), w).shape == (0, 8)
    assert linear_triton(torch.randn(2, 16, device=triton_device), w[:0]).shape == (2, 0)


# (rows, in features, out features, knobs): one row to more than one tile of rows, K splits that
# do and do not divide K, ragged N and K
DOT_CASES = [
    (1, 256, 128, dict(bn=64, bk=64, split=1)), (1, 300, 37, dict(bn=32, bk=64, split=3)),
    (5, 100, 320, dict(bn=64, bk=64, split=2)), (20, 512, 200, dict(bn=64, bk=128, split=4)),
    (130, 256, 64, dict(bm=64, bn=32, bk=64, split=1)), (130, 200, 96, dict(bm=128, bn=64, bk=64, split=2)),
]


def _dot_inputs(rows, k, n, dtype, device, bias):
    x = torch.randn(rows, k, device=device).to(dtype)
    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
    return x, w, torch.randn(n, device=device).to(dtype) if bias else None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,k,n,knobs", DOT_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_dot_linear_matches_f_linear(rows, k, n, knobs, bias, dtype, triton_device):
    from hymba.ops.linear.triton import linear_dot

    if triton_device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's CPU interpreter gets tl.dot on bfloat16 wrong; runs on the GPU")
    x, w, b = _dot_inputs(rows, k, n, dtype, triton_device, bias)
    got = linear_dot(x, w, b, knobs=knobs)
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert got.shape == (rows, n) and got.dtype == dtype
    torch.testing.assert_close(got.double(), want, **_tolerance(dtype))
    torch.testing.assert_close(linear_dot(x, w, b).double(), want, **_tolerance(dtype))  # its defaults


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,k,n,knobs", DOT_CASES)
def test_dot_swiglu_matches_unfused(rows, k, n, knobs, dtype, triton_device):
    from hymba.ops.linear.triton import swiglu_dot

    if triton_device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's CPU interpreter gets tl.dot on bfloat16 wrong; runs on the GPU")
    x, wg, _ = _dot_inputs(rows, k, n, dtype, triton_device, False)
    wu = (torch.randn(n, k, device=triton_device) / k**0.5).to(dtype)
    g, u = (F.linear(x.double(), w.double()).to(dtype) for w in (wg, wu))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2**-6, atol=2**-6)
    torch.testing.assert_close(swiglu_dot(x, wg, wu, knobs=knobs), silu_mul(g, u), **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel,rows,knobs", [("gemv", 1, None), ("gemv", 3, None), ("dot", 1, dict(split=1)),
                                               ("dot", 4, dict(split=3)), ("dot", 70, None)])
def test_residual_added_after_rounding(kernel, rows, knobs, dtype, triton_device):
    """``linear(..., residual)`` = the product rounded to the dtype, plus the residual, rounded:
    bit for bit, with integer inputs whose float32 sums are exact but need more than bf16's 8
    bits, so that adding the residual before rounding would differ."""
    from hymba.ops.linear.triton import linear_dot, linear_triton

    if triton_device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's CPU interpreter rounds to bf16 by truncation; runs on the GPU")
    g = torch.Generator().manual_seed(1)
    ints = lambda *s: torch.randint(-9, 10, s, generator=g).to(triton_device, dtype)  # noqa: E731
    x, w, b = ints(rows, 384), ints(200, 384), ints(200)
    res = (torch.randn(rows, 2, 200, generator=g) * 3).to(triton_device, dtype)[:, 1]  # fractions, strided
    got = linear_triton(x, w, b, res) if kernel == "gemv" else linear_dot(x, w, b, res, knobs=knobs)
    product = F.linear(x.double(), w.double(), b.double()).to(dtype)  # exact, then rounded once
    want = (res.float() + product.float()).to(dtype)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="residual"):
        linear_triton(x, w, b, res[:, :100])


@pytest.mark.gpu
def test_linear_falls_back_where_the_kernels_do_not_fit(monkeypatch, triton_device):
    """Inputs the kernels do not take go to F.linear (with its broadcasting and its errors)."""
    if triton_device == "cpu":
        monkeypatch.setenv("HYMBA_TRITON", "force")
    dev = triton_device
    x, w = torch.randn(2, 64, device=dev), torch.randn(32, 64, device=dev)
    res_row = torch.randn(32, device=dev)  # broadcast over the rows
    torch.testing.assert_close(linear(x, w, None, res_row), res_row + F.linear(x, w))
    res_3d = torch.randn(2, 2, 32, device=dev)  # broadcasts to (2, 2, 32)
    assert linear(x[:, None], w, None, res_3d).shape == (2, 2, 32)
    bias = torch.randn(32, 2, device=dev)[:, 0]  # strided bias
    torch.testing.assert_close(linear(x, w, bias), F.linear(x, w, bias))
    assert linear(torch.randn(2, 0, device=dev), torch.randn(8, 0, device=dev)).abs().sum() == 0  # K = 0
    with pytest.raises(RuntimeError):  # in-features that do not match, as F.linear says
        linear(x, torch.randn(32, 48, device=dev))
    assert swiglu(x, w, torch.randn(32, 64, device=dev)).shape == (2, 32)
    with pytest.raises(RuntimeError):
        swiglu(x, w, torch.randn(16, 64, device=dev))  # gate and up of different widths


@pytest.mark.gpu
def test_dot_no_rows_or_features(triton_device):
    from hymba.ops.linear.triton import linear_dot, swiglu_dot

    w = torch.randn(8, 16, device=triton_device)
    assert linear_dot(torch.randn(0, 16, device=triton_device), w).shape == (0, 8)
    assert swiglu_dot(torch.randn(2, 16, device=triton_device), w[:0], w[:0]).shape == (2, 0)
    with pytest.raises(ValueError, match="width"):
        linear_dot(torch.randn(2, 12, device=triton_device), w)


def test_cpu_residual_is_added():
    x, w, res = torch.randn(2, 8), torch.randn(6, 8), torch.randn(2, 6)
    torch.testing.assert_close(linear(x, w, None, res), res + F.linear(x, w))


def test_dispatch_rules(monkeypatch):
    def kernel(rows: int, k: int, n: int, gated: bool = False, **kw) -> str | None:
        x, w = torch.randn(rows, k, **kw), torch.randn(n, k, **kw)
        return kernel_for(x, w, w) if gated else kernel_for(x, w)

    # a GPU of 132 SMs (H100, H200) at Hymba-1.5B's decode weights
    monkeypatch.setattr(linear_module, "num_sms", lambda device: 132)
    # one row: the LM head and the SwiGLU on tensor cores, short rows and few long rows (the
    # output and down projections) as matrix-vector products, the input and x projections on
    # tensor cores where kernels launch early (PDL), else on cuBLAS
    assert kernel(1, 1600, 32001) == "dot" and kernel(1, 1600, 5504, gated=True) == "dot"
    assert kernel(1, 100, 3200) == kernel(1, 3200, 1600) == kernel(1, 5504, 1600) == "gemv"
    assert kernel(1, 1600, 8960) is None and kernel(1, 3200, 132) is None  # CPU tensors: no PDL
    with monkeypatch.context() as m:
        m.setattr(linear_module, "pdl_supported", lambda device: True)
        assert kernel(1, 1600, 8960) == kernel(1, 3200, 132) == "dot"
    # two to four rows: tensor cores but for the input projection
    assert kernel(4, 3200, 132) == kernel(2, 100, 3200) == kernel(3, 5504, 1600) == "dot"
    assert kernel(4, 1600, 8960) is None
    # up to 128 rows: the SwiGLU and the LM head; then cuBLAS
    assert kernel(128, 1600, 5504, gated=True) == kernel(32, 1600, 32001) == "dot"
    assert kernel(128, 5504, 1600) is None and kernel(128, 3200, 132) is None
    assert kernel(129, 1600, 32001) is None
    x, w = torch.randn(1, 8), torch.randn(16896, 8)
    assert kernel_for(x, w) == "dot"
    assert kernel_for(x.double(), w.double()) == "dot"  # use_triton() keeps float64 away
    assert kernel_for(x, w.bfloat16()) is None  # mixed dtypes
    assert kernel_for(x, torch.randn(8, 16896).t()) is None  # column stride
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernel_for(x, w) is None  # autocast


def test_dispatch_rules_follow_the_sm_count(monkeypatch):
    """The thresholds that are about filling the GPU scale with its SM count: an output that is
    wide on a GPU of 108 SMs is not on one of 132; the output features a matrix-vector product
    needs grow with the SMs too."""
    x = torch.randn(1, 1600)
    for sms, wide in ((108, "dot"), (132, None)):
        monkeypatch.setattr(linear_module, "num_sms", lambda device, sms=sms: sms)
        assert kernel_for(x, torch.randn(16384, 1600)) == wide
    x = torch.randn(1, 3200)
    for sms, gemv in ((132, "gemv"), (256, None)):
        monkeypatch.setattr(linear_module, "num_sms", lambda device, sms=sms: sms)
        assert kernel_for(x, torch.randn(1600, 3200)) == gemv


def test_num_sms_is_looked_up_once_per_device(monkeypatch):
    """switches.num_sms asks CUDA once per device index (and answers for CPU tensors without it)."""
    from hymba.ops import switches

    calls = []

    class Props:
        multi_processor_count = 77

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: calls.append(i) or Props())
    switches._sms.cache_clear()
    try:
        assert switches.num_sms(torch.device("cuda", 3)) == 77
        assert switches.num_sms(torch.device("cuda", 3)) == 77
        assert calls == [3]
        assert switches.num_sms(torch.device("cpu")) == switches.INTERPRETER_SMS
    finally:
        switches._sms.cache_clear()


def test_cpu_is_f_linear_and_keeps_autograd():
    x = torch.randn(1, 8, requires_grad=True)
    wg, wu = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    y = swiglu(x, wg, wu)
    y.sum().backward()
    assert x.grad is not None and wg.grad is not None and wu.grad is not None
    torch.testing.assert_close(y, F.silu(F.linear(x, wg)) * F.linear(x, wu))
    torch.testing.assert_close(linear(x, wg), F.linear(x, wg))


@pytest.mark.parametrize("k, n, bias", [(100, 3200, True), (3200, 132, False), (36, 20, True), (64, 128, False)])
def test_aligned_linear_equals_f_linear_with_gradients(k, n, bias):
    """The zero-padded product (what CUDA prefill and training run for widths that are not a
    multiple of 8) gives F.linear's values and gradients, as a view of a wider output."""
    from hymba.ops.linear.cublas import ALIGN, _aligned_linear

    g = torch.Generator().manual_seed(k + n)
    x = torch.randn(3, 50, k, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    y = _aligned_linear(x, w, b)
    ref = F.linear(x, w, b)
    assert y.shape == ref.shape and y.stride(-2) == n + (-n % ALIGN)
    torch.testing.assert_close(y, ref)
    dy = torch.randn_like(ref)
    leaves = [t for t in (x, w, b) if t is not None]
    got = torch.autograd.grad(y, leaves, dy)
    want = torch.autograd.grad(ref, leaves, dy)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)


def test_padded_weight_follows_in_place_changes():
    """The zero-padded weight is kept between calls without autograd and redone after the
    weight changes in place."""
    from hymba.ops.linear.cublas import _aligned_linear

    x, w = torch.randn(40, 100, dtype=torch.float64), torch.randn(132, 100, dtype=torch.float64)
    torch.testing.assert_close(_aligned_linear(x, w, None), F.linear(x, w))
    torch.testing.assert_close(_aligned_linear(x, w, None), F.linear(x, w))
    w.mul_(-2)
    torch.testing.assert_close(_aligned_linear(x, w, None), F.linear(x, w))


def test_cpu_accumulate_leaves_the_residual():
    x, w, res = torch.randn(300, 8), torch.randn(16, 8), torch.randn(300, 16)
    kept = res.clone()
    torch.testing.assert_close(linear(x, w, None, res, accumulate=True), kept + F.linear(x, w))
    assert torch.equal(res, kept)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accumulate_adds_into_the_residual_on_cuda(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator(device="cuda").manual_seed(0)
    kw = dict(device="cuda", dtype=dtype, generator=g)
    x, w, res = torch.randn(2, 300, 64, **kw), torch.randn(48, 64, **kw), torch.randn(2, 300, 48, **kw)
    want = res.float() + F.linear(x.float(), w.float())
    got = linear(x, w, None, res, accumulate=True)
    assert got is res  # in place: one product, no separate add
    torch.testing.assert_close(got.float(), want, **_tolerance(dtype))
    # with autograd (or a bias) the residual is kept
    res2 = torch.randn(2, 300, 48, **kw)
    w.requires_grad_(True)
    out = linear(x, w, None, res2, accumulate=True)
    assert out is not res2 and out.requires_grad


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA autocast")
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_autocast_training_forms_float32_weight_gradients(x_dtype, bias):
    """Under CUDA autocast with float32 parameters, linear (and the unfused SwiGLU) compute as
    autocast does, and form the parameters' gradients in float32 inside the product: the same
    output and input gradient, and weight gradients at least as close to float64's."""
    from hymba.ops.linear.cublas import _MM_WRITES_FLOAT32

    if not _MM_WRITES_FLOAT32:
        pytest.skip("this PyTorch's matrix product cannot write float32 from bf16")
    torch.manual_seed(0)
    x = torch.randn(2, 70, 64, device="cuda").to(x_dtype)
    w = torch.randn(48, 64, device="cuda") / 8
    b = torch.randn(48, device="cuda") if bias else None
    dy = torch.randn(2, 70, 48, device="cuda")

    def run(fn, dtype=None):
        leaves = [t.detach().to(dtype or t.dtype).requires_grad_(True) for t in (x, w, b) if t is not None]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is None):
            y = fn(*leaves)
        y.backward(dy.to(y.dtype))
        return y, [t.grad for t in leaves], y.grad_fn

    ours, ours_grads, grad_fn = run(lambda *t: linear(*t))
    auto, auto_grads, _ = run(lambda *t: F.linear(*t))
    _, exact_grads, _ = run(lambda *t: F.linear(*t), torch.float64)
    assert "AutocastLinear" in type(grad_fn).__name__
    assert ours.dtype == auto.dtype == torch.bfloat16
    torch.testing.assert_close(ours, auto, rtol=0, atol=0)
    assert ours_grads[0].dtype == x_dtype
    torch.testing.assert_close(ours_grads[0], auto_grads[0], rtol=2**-7, atol=1e-3)
    for got, theirs, want in zip(ours_grads[1:], auto_grads[1:], exact_grads[1:]):
        assert got.dtype == torch.float32
        assert (got.double() - want).norm() <= (theirs.double() - want).norm()

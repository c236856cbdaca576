"""Int8 weights (per-output-channel scales, as torchao's int8 weight-only quantization stores them)
in the decode linear kernels: the matrix-vector and tensor-core kernels against
:func:`int8_linear_reference`, and the dispatch of torchao tensors in :func:`hymba.ops.linear`.

The kernels run on the GPU, or on CPU under ``TRITON_INTERPRET=1`` (float32 there: the interpreter
rounds to bfloat16 by truncation and gets ``tl.dot`` on bfloat16 wrong)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hymba.ops.linear import int8_linear_reference, is_quantized, linear, quantized_linear
from hymba.ops.linear.quantized import int8_rows
from hymba.ops.swiglu import swiglu


def _int8(n: int, k: int, device, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.randint(-127, 128, (n, k), generator=generator, dtype=torch.int8).to(device)
    scale = (torch.rand(n, generator=generator) * 0.02 + 1e-3).to(device)
    return q, scale


def _dtypes(device: str) -> list[torch.dtype]:
    return [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]


def _tolerance(dtype: torch.dtype) -> dict:
    # the same float32 sums in another order (outputs near zero from sums of terms up to ~1 in
    # size: absolute error a few float32 steps of the terms); bf16 outputs may round one step apart
    return dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=2**-7, atol=2**-7)


def test_reference_is_the_dequantized_product():
    """``W = qdata · scale[:, None]``: the reference equals F.linear with that weight."""
    q, scale = _int8(24, 40, "cpu")
    x, b, res = torch.randn(3, 40, dtype=torch.float64), torch.randn(24, dtype=torch.float64), torch.randn(3, 24)
    w = q.double() * scale.double()[:, None]
    got = int8_linear_reference(x, q, scale, b)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-6, atol=1e-6)
    x32 = x.float()
    torch.testing.assert_close(int8_linear_reference(x32, q, scale, None, res),
                               res + F.linear(x32, w.float()), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("lead,k,n", [((1,), 640, 96), ((2, 1), 100, 40), ((3,), 300, 37), ((1, 1), 5, 16)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_gemv_int8_matches_reference(lead, k, n, bias, residual, triton_device):
    from hymba.ops.linear.triton import linear_triton

    g = torch.Generator().manual_seed(2)
    q, scale = _int8(n, k, triton_device, g)
    for dtype in _dtypes(triton_device):
        x = torch.randn(*lead, k, generator=g).to(triton_device, dtype)
        b = torch.randn(n, generator=g).to(triton_device, dtype) if bias else None
        res = torch.randn(*lead, n, generator=g).to(triton_device, dtype) if residual else None
        got = linear_triton(x, q, b, res, scale=scale)
        assert got.shape == (*lead, n) and got.dtype == dtype
        torch.testing.assert_close(got, int8_linear_reference(x, q, scale, b, res), **_tolerance(dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("rows,k,n,knobs", [(1, 256, 128, dict(bn=64, bk=64, split=1)),
                                            (5, 300, 37, dict(bn=32, bk=64, split=3)),
                                            (20, 512, 200, dict(bn=64, bk=128, split=2))])
@pytest.mark.parametrize("bias", [False, True])
def test_dot_int8_matches_reference(rows, k, n, knobs, bias, triton_device):
    from hymba.ops.linear.triton import linear_dot

    g = torch.Generator().manual_seed(3)
    q, scale = _int8(n, k, triton_device, g)
    for dtype in _dtypes(triton_device):
        x = torch.randn(rows, k, generator=g).to(triton_device, dtype)
        b = torch.randn(n, generator=g).to(triton_device, dtype) if bias else None
        res = torch.randn(rows, n, generator=g).to(triton_device, dtype)
        want = int8_linear_reference(x, q, scale, b, res)
        torch.testing.assert_close(linear_dot(x, q, b, res, knobs=knobs, scale=scale), want, **_tolerance(dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("rows,k,n,knobs", [(1, 256, 128, dict(bn=64, bk=64, split=1)),
                                            (3, 300, 37, dict(bn=32, bk=64, split=3)), (40, 128, 96, None)])
def test_swiglu_dot_int8_matches_reference(rows, k, n, knobs, triton_device):
    """The gated kernel with int8 gate and up weights: SiLU and product of the two int8 products,
    each rounded as the reference rounds it."""
    from hymba.ops.linear.triton import swiglu_dot

    g = torch.Generator().manual_seed(4)
    (qg, sg), (qu, su) = _int8(n, k, triton_device, g), _int8(n, k, triton_device, g)
    for dtype in _dtypes(triton_device):
        x = torch.randn(rows, k, generator=g).to(triton_device, dtype)
        want = F.silu(int8_linear_reference(x, qg, sg)) * int8_linear_reference(x, qu, su)
        got = swiglu_dot(x, qg, qu, knobs=knobs, gate_scale=sg, up_scale=su)
        torch.testing.assert_close(got, want, **_tolerance(dtype))
    with pytest.raises(ValueError, match="both int8"):
        swiglu_dot(x, qg, qu.to(x.dtype), gate_scale=sg)


@pytest.mark.gpu
def test_int8_kernels_refuse_missing_or_misshaped_scales(triton_device):
    from hymba.ops.linear.triton import linear_dot, linear_triton

    q, scale = _int8(16, 32, triton_device)
    x = torch.randn(1, 32, device=triton_device)
    for run in (linear_triton, linear_dot):
        with pytest.raises(ValueError, match="scale"):
            run(x, q)
        with pytest.raises(ValueError, match="scale"):
            run(x, q, scale=scale[:8])
        with pytest.raises(ValueError, match="scale"):
            run(x, q.float(), scale=scale)


# ---- torchao tensors ---------------------------------------------------------------------------

def _torchao_int8(n: int, k: int, bias: bool = False) -> torch.nn.Linear:
    tq = pytest.importorskip("torchao.quantization")
    layer = torch.nn.Linear(k, n, bias=bias)
    tq.quantize_(layer, tq.Int8WeightOnlyConfig(granularity=tq.PerRow(), set_inductor_config=False))
    return layer


def test_plain_weights_are_not_quantized():
    w = torch.nn.Parameter(torch.randn(4, 8))
    assert not is_quantized(w) and not is_quantized(None) and int8_rows(w) is None


def test_int8_rows_reads_torchao_data_and_scales():
    layer = _torchao_int8(24, 64)
    assert is_quantized(layer.weight)
    q, scale = int8_rows(layer.weight)
    assert q.dtype == torch.int8 and q.shape == (24, 64) and scale.shape == (24,)
    x = torch.randn(2, 64)
    # torchao's own product (bf16-free on fp32) is the dequantized one
    torch.testing.assert_close(int8_linear_reference(x, q, scale), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)


def test_int8_rows_refuses_per_group_scales():
    tq = pytest.importorskip("torchao.quantization")
    layer = torch.nn.Linear(64, 16)
    tq.quantize_(layer, tq.Int8WeightOnlyConfig(granularity=tq.PerGroup(32), set_inductor_config=False))
    assert is_quantized(layer.weight) and int8_rows(layer.weight) is None
    x = torch.randn(1, 64)
    torch.testing.assert_close(linear(x, layer.weight, layer.bias), F.linear(x, layer.weight, layer.bias))


def test_cpu_quantized_linear_is_torchao_f_linear():
    """Without the kernels (CPU), every quantized product is torchao's F.linear (residual added
    after it; the residual is never updated in place)."""
    layer = _torchao_int8(32, 48, bias=True)
    x, res = torch.randn(3, 48), torch.randn(3, 32)
    want = F.linear(x, layer.weight, layer.bias)
    assert torch.equal(linear(x, layer.weight, layer.bias), want)
    kept = res.clone()
    assert torch.equal(linear(x, layer.weight, layer.bias, res, accumulate=True), res + want)
    assert torch.equal(res, kept)
    gate, up = _torchao_int8(32, 48), _torchao_int8(32, 48)
    torch.testing.assert_close(swiglu(x, gate.weight, up.weight),
                               F.silu(F.linear(x, gate.weight)) * F.linear(x, up.weight))


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 3, 6])
def test_dispatch_runs_the_int8_kernels(rows, monkeypatch, triton_device):
    """A torchao int8 weight of a decode step's rows goes to the kernels on its int8 data (not
    through torchao's product, which would hold a dequantized copy)."""
    from hymba.ops.linear import triton as kernels

    if triton_device == "cpu":
        monkeypatch.setenv("HYMBA_TRITON", "force")
    layer = _torchao_int8(40, 96, bias=True).to(triton_device)
    q, scale = int8_rows(layer.weight)
    calls = []
    for name in ("linear_triton", "linear_dot"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _real=real, _n=name, **kw: calls.append(_n) or _real(*a, **kw))
    x, res = torch.randn(rows, 96, device=triton_device), torch.randn(rows, 40, device=triton_device)
    with torch.no_grad():
        got = quantized_linear(x, layer.weight, layer.bias, res)
    assert calls == ["linear_triton" if rows <= 4 else "linear_dot"]
    torch.testing.assert_close(got, int8_linear_reference(x, q, scale, layer.bias, res), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, res + F.linear(x, layer.weight, layer.bias), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 5])
def test_swiglu_dispatch_runs_the_gated_int8_kernel(rows, monkeypatch, triton_device):
    from hymba.ops.linear import triton as kernels

    if triton_device == "cpu":
        monkeypatch.setenv("HYMBA_TRITON", "force")
    gate, up = _torchao_int8(48, 64).to(triton_device), _torchao_int8(48, 64).to(triton_device)
    calls = []
    real = kernels.swiglu_dot
    monkeypatch.setattr(kernels, "swiglu_dot", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    x = torch.randn(rows, 64, device=triton_device)
    with torch.no_grad():
        got = swiglu(x, gate.weight, up.weight)
    assert len(calls) == 1 and calls[0]["gate_scale"] is not None
    (qg, sg), (qu, su) = int8_rows(gate.weight), int8_rows(up.weight)
    want = F.silu(int8_linear_reference(x, qg, sg)) * int8_linear_reference(x, qu, su)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---- the fused SSM branch step with int8 x_proj / dt_proj weights --------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("b,norms", [(1, True), (3, False)])
def test_fused_mamba_step_with_int8_projections(b, norms, triton_device, monkeypatch):
    """The two-kernel SSM step reads torchao int8 x_proj and dt_proj weights (data and scales) and
    gives the stages' result, whose products run torchao's F.linear (float32 tolerances)."""
    tq = pytest.importorskip("torchao.quantization")
    from test_ssm_step_triton import (
        _check_fused_against_references,
        _force_triton_on_cpu,
        _mamba_weights,
    )

    from hymba import ops

    dev, d, n, r = triton_device, 100, 16, 7
    _force_triton_on_cpu(dev, monkeypatch)
    w = _mamba_weights(d, n, r, 4, norms, True, torch.float32, dev)
    w = w._replace(x_proj_weight=tq.Int8Tensor.from_hp(w.x_proj_weight, tq.PerRow()),
                   dt_weight=tq.Int8Tensor.from_hp(w.dt_weight, tq.PerRow()))
    conv, ssm = torch.randn(b, d, 4, device=dev), torch.randn(b, d, n, device=dev)
    for _ in range(2):
        x, z = torch.randn(2, b, d, device=dev)
        _check_fused_against_references(x, z, conv, ssm, w, monkeypatch)
    per_group = tq.Int8Tensor.from_hp(torch.randn(r + 2 * n, d, device=dev), tq.PerGroup(50))
    assert not ops.fused_mamba_step_supported(x, z, conv, ssm, *w._replace(x_proj_weight=per_group))


@pytest.mark.gpu
def test_fused_step_refuses_scales_that_do_not_fit(triton_device):
    from test_ssm_step_triton import _mamba_weights

    from hymba.ops.ssm_step.triton import fused_mamba_step_triton

    dev = triton_device
    w = _mamba_weights(64, 16, 4, 4, True, True, torch.float32, dev)
    x, z, conv, ssm = torch.randn(1, 64), torch.randn(1, 64), torch.randn(1, 64, 4), torch.randn(1, 64, 16)
    with pytest.raises(ValueError, match="one scale per output feature"):
        fused_mamba_step_triton(x, z, conv, ssm, *w, x_proj_scale=torch.ones(36))  # a float weight
    q = torch.ones(36, 64, dtype=torch.int8, device=dev)
    with pytest.raises(ValueError, match="one scale per output feature"):
        fused_mamba_step_triton(x, z, conv, ssm, *w._replace(x_proj_weight=q))  # no scales

"""The SSM decode-step kernels (the state update, the fused branch step) against their PyTorch
references, on the GPU or under Triton's CPU interpreter."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from hymba import ops
from hymba.ops.ssm_step import selective_state_update

pytestmark = pytest.mark.gpu


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,d,n", [(1, 64, 16), (4, 130, 16), (2, 33, 8)])
def test_state_step(b, d, n, dtype, triton_device):
    from hymba.ops.ssm_step.triton import ssm_decode_step_triton

    dev = triton_device
    r = lambda *s: torch.randn(*s, device=dev)  # noqa: E731
    proj = r(b, 2 * d).to(dtype)
    u, z = r(b, d).to(dtype), proj[:, d:]  # z strided like the fused projection's split
    delta = (r(b, d) - 1).to(dtype)
    bc = r(b, 2 * n).to(dtype)
    B, C = bc[:, :n], bc[:, n:]
    A_log, D, bias = r(d, n) * 0.5, r(d), r(d) * 0.5 - 1
    state = r(b, d, n)
    ref_state = state.clone()
    got = ssm_decode_step_triton(state, u, delta, A_log, B, C, D, z, bias)
    want = selective_state_update(ref_state, u, delta, -torch.exp(A_log), B, C, D, z, bias, True)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, **_tol(dtype))
    torch.testing.assert_close(state, ref_state, rtol=1e-5, atol=1e-5)




class Weights(NamedTuple):
    """The SSM branch's parameters in the order of ``ops.fused_mamba_step``'s arguments."""

    conv_weight: torch.Tensor  # (d_inner, d_conv), oldest tap first
    conv_bias: torch.Tensor | None  # (d_inner,)
    x_proj_weight: torch.Tensor  # (dt_rank + 2 d_state, d_inner)
    norm_weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # the Δ, B, C RMSNorm weights
    eps: float
    dt_weight: torch.Tensor  # (d_inner, dt_rank)
    dt_bias: torch.Tensor  # (d_inner,)
    A_log: torch.Tensor  # (d_inner, d_state)
    D: torch.Tensor  # (d_inner,)


def _mamba_weights(d, n, r, k, norms, conv_bias, dtype, dev) -> Weights:
    g = lambda *s: torch.randn(*s, device=dev)  # noqa: E731
    return Weights(
        conv_weight=(g(d, k) * 0.5).to(dtype), conv_bias=(g(d) * 0.1).to(dtype) if conv_bias else None,
        x_proj_weight=(g(r + 2 * n, d) / d**0.5).to(dtype),
        norm_weights=tuple((1 + 0.1 * g(m)).to(dtype) for m in (r, n, n)) if norms else None, eps=1e-6,
        dt_weight=(g(d, r) / r**0.5).to(dtype), dt_bias=g(d) * 0.5 - 1, A_log=g(d, n) * 0.5, D=g(d),
    )


def _stages(x, z, conv, ssm, w: Weights):
    """The branch's decode step stage by stage through the ops (each its kernel on CUDA or with
    HYMBA_TRITON=force, its reference with HYMBA_TRITON=0), as MambaBranch.step runs it."""
    xc = ops.causal_conv1d_update(x, conv, w.conv_weight, w.conv_bias)
    proj = ops.linear(xc, w.x_proj_weight)
    sizes = (w.dt_weight.shape[1], ssm.shape[-1], ssm.shape[-1])
    if w.norm_weights is None:
        dt, B, C = proj.split(list(sizes), dim=-1)
    else:
        dt, B, C = ops.rms_norm_parts(proj, sizes, w.norm_weights, w.eps)
    return ops.ssm_decode_step(ssm, xc, ops.linear(dt, w.dt_weight), w.A_log, B, C, w.D, z, w.dt_bias)


def _fused(x, z, conv, ssm, w: Weights):
    from hymba.ops.ssm_step.triton import fused_mamba_step_triton

    return fused_mamba_step_triton(x, z, conv, ssm, *w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,d,n,r,norms,conv_bias", [
    (1, 64, 16, 4, True, True), (3, 130, 16, 9, False, True), (2, 100, 8, 7, True, False), (4, 200, 16, 13, True, True),
])
def test_fused_mamba_step(b, d, n, r, norms, conv_bias, dtype, triton_device, monkeypatch):
    """The two-kernel SSM branch step against the stages one by one (PyTorch references in
    float32 on the same values), over several steps (the conv shift and the states carried), d not
    a multiple of the block. In bfloat16 the kernels round where the stages store their outputs,
    so the bound is on the relative error of the whole step."""
    dev = triton_device
    w = _mamba_weights(d, n, r, 4, norms, conv_bias, dtype, dev)
    w32 = Weights(*(t.float() if isinstance(t, torch.Tensor) else t for t in w))
    w32 = w32._replace(norm_weights=tuple(t.float() for t in w.norm_weights) if norms else None)
    conv, ssm = torch.randn(b, d, 4, device=dev).to(dtype), torch.randn(b, d, n, device=dev)
    ref_conv, ref_ssm = conv.to(torch.float32, copy=True), ssm.clone()
    monkeypatch.setenv("HYMBA_TRITON", "0")  # the stages' references
    for _ in range(3):
        proj = torch.randn(b, 3 * d, device=dev).to(dtype)
        x, z = proj[:, :d], proj[:, 2 * d:]  # strided rows, as split from the fused projection
        got = _fused(x, z, conv, ssm, w)
        want = _stages(x.float(), z.float(), ref_conv, ref_ssm, w32)
        assert got.dtype == dtype and got.shape == (b, d)
        torch.testing.assert_close(conv.float(), ref_conv, rtol=0, atol=0)
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, **_tol(dtype))
            torch.testing.assert_close(ssm, ref_ssm, **_tol(dtype))
        else:
            assert (got.float() - want).norm() / want.norm() < 0.03
            assert (ssm - ref_ssm).norm() / ref_ssm.norm() < 0.03


def _force_triton_on_cpu(dev, monkeypatch):
    if dev == "cpu":
        monkeypatch.setenv("HYMBA_TRITON", "force")  # the Triton kernels under the interpreter


def _check_fused_against_references(x, z, conv, ssm, w, monkeypatch):
    """ops.fused_mamba_step on (x, z) and the states against the stages' PyTorch references on
    copies of the states (float32 tolerances)."""
    ref_conv, ref_ssm = conv.clone(), ssm.clone()
    assert ops.fused_mamba_step_supported(x, z, conv, ssm, *w)
    got = ops.fused_mamba_step(x, z, conv, ssm, *w)
    with monkeypatch.context() as m:
        m.setenv("HYMBA_TRITON", "0")
        want = _stages(x, z, ref_conv, ref_ssm, w)
    torch.testing.assert_close(got, want, **_tol(torch.float32))
    torch.testing.assert_close(ssm, ref_ssm, **_tol(torch.float32))


def test_fused_mamba_step_supported(triton_device, monkeypatch):
    """The fused step is offered up to FUSED_MAX_ROWS rows and gives the references' result; not
    for more rows, a state size that is not a power of two, another dtype, autograd or
    HYMBA_TRITON=0."""
    from hymba.ops.ssm_step import FUSED_MAX_ROWS

    dev = triton_device
    _force_triton_on_cpu(dev, monkeypatch)
    w = _mamba_weights(64, 16, 4, 4, True, True, torch.float32, dev)

    def states(b, n=16):
        return torch.randn(b, 64, 4, device=dev), torch.randn(b, 64, n, device=dev)

    x, z = torch.randn(2, 2, 64, device=dev)
    _check_fused_against_references(x, z, *states(2), w, monkeypatch)
    x, z = torch.randn(2, FUSED_MAX_ROWS + 1, 64, device=dev)
    assert not ops.fused_mamba_step_supported(x, z, *states(FUSED_MAX_ROWS + 1), *w)
    x, z = torch.randn(2, 1, 64, device=dev)
    w12 = w._replace(A_log=torch.randn(64, 12, device=dev), x_proj_weight=torch.randn(28, 64, device=dev))
    assert not ops.fused_mamba_step_supported(x, z, *states(1, 12), *w12)
    assert not ops.fused_mamba_step_supported(x.double(), z.double(), *states(1), *w)
    assert not ops.fused_mamba_step_supported(x.clone().requires_grad_(), z, *states(1), *w)
    monkeypatch.setenv("HYMBA_TRITON", "0")
    assert not ops.fused_mamba_step_supported(x, z, *states(1), *w)


def _sparse_signs(rows, cols, per_row, dev):
    """A weight of ``per_row`` entries ±1 a row: its products sum exactly in float32 in any order."""
    w = torch.zeros(rows, cols, device=dev)
    for i in range(rows):
        w[i, torch.randperm(cols, device=dev)[:per_row]] = torch.randint(0, 2, (per_row,), device=dev).float() * 2 - 1
    return w


@pytest.mark.parametrize("b,norms", [(1, True), (3, True), (2, False)])
def test_fused_mamba_step_rounds_as_the_stages(b, norms, triton_device, monkeypatch):
    """With products that sum exactly in any order, the fused step equals the stage kernels bit for
    bit (half precision: every rounding point of the stages shows): x_proj's output, the norms'
    normalised values and products, dt_proj's output and the stored conv output. The float32 SSM
    state may differ by an ulp or two (two kernels' float32 arithmetic need not round alike, e.g.
    where the compiler fuses a multiply and an add); a missed half-precision rounding would move
    it by ~1e-3."""
    dev, d, n, r, dtype = triton_device, 200, 16, 13, torch.float16
    _force_triton_on_cpu(dev, monkeypatch)  # the stages too run their Triton kernels
    w = _mamba_weights(d, n, r, 4, norms, True, dtype, dev)
    w = w._replace(x_proj_weight=_sparse_signs(r + 2 * n, d, 4, dev).to(dtype),
                   dt_weight=_sparse_signs(d, r, 2, dev).to(dtype))
    conv, ssm = torch.randn(b, d, 4, device=dev).to(dtype), torch.randn(b, d, n, device=dev)
    ref_conv, ref_ssm = conv.clone(), ssm.clone()
    for _ in range(2):
        proj = torch.randn(b, 3 * d, device=dev).to(dtype)
        x, z = proj[:, :d], proj[:, 2 * d:]
        got = _fused(x, z, conv, ssm, w)
        want = _stages(x, z, ref_conv, ref_ssm, w)
        assert torch.equal(got, want) and torch.equal(conv, ref_conv)
        torch.testing.assert_close(ssm, ref_ssm, rtol=2e-6, atol=2e-6)


def test_fused_mamba_step_strided_parameters(triton_device, monkeypatch):
    """Parameters that are strided views (A_log, D, the Δ bias, a column-major x_proj weight) give
    the references' result: the kernels get contiguous copies."""
    dev, d, n = triton_device, 96, 16
    _force_triton_on_cpu(dev, monkeypatch)
    w = _mamba_weights(d, n, 6, 4, True, True, torch.float32, dev)
    w = w._replace(A_log=torch.randn(d, 2 * n, device=dev)[:, :n], D=torch.randn(2 * d, device=dev)[::2],
                   dt_bias=torch.randn(d, 2, device=dev)[:, 0], x_proj_weight=w.x_proj_weight.t().contiguous().t())
    x, z = torch.randn(2, 1, d, device=dev)
    conv, ssm = torch.randn(1, d, 4, device=dev), torch.randn(1, d, n, device=dev)
    _check_fused_against_references(x, z, conv, ssm, w, monkeypatch)

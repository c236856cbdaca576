"""The chunked CPU scan must compute exactly what the sequential reference computes."""

from __future__ import annotations

import pytest
import torch

from hymba.ops.scan import (
    resolve_impl,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)


def random_inputs(b, L, d, n, dtype, seed=0, big_decay=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    A = -torch.exp(r(d, n) * 0.5 + (2.5 if big_decay else 0.0))
    args = dict(
        u=r(b, L, d), delta=r(b, L, d), A=A, B=r(b, L, n), C=r(b, L, n), D=r(d), z=r(b, L, d),
        delta_bias=r(d) * 0.5 - 1.0, initial_state=r(b, d, n),
    )
    return {k: v.to(dtype) for k, v in args.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 3, 4), (2, 37, 8, 16), (3, 100, 5, 7)])
@pytest.mark.parametrize("block,group", [(1, 1), (16, 4), (32, 8), (24, 5)])
@pytest.mark.parametrize("grad", [False, True])
def test_chunked_matches_reference(dtype, shape, block, group, grad):
    args = random_inputs(*shape, dtype)
    y_ref, s_ref = selective_scan_reference(**args)
    args["u"].requires_grad_(grad)
    y, s = selective_scan_chunked(**args, block=block, group=group)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-11, atol=1e-11)
    assert y.dtype == dtype and s.dtype == dtype
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(s, s_ref, **tol)


def test_chunked_is_stable_with_strong_decay():
    """Decays that underflow to zero within a few steps must not produce NaN or inf."""
    args = random_inputs(2, 64, 6, 16, torch.float32, big_decay=True)
    args["delta_bias"] = args["delta_bias"] + 3.0
    y_ref, s_ref = selective_scan_reference(**args)
    y, s = selective_scan_chunked(**args, block=64)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-5)


def test_optional_arguments_and_zero_initial_state():
    args = random_inputs(2, 20, 4, 8, torch.float64)
    for drop in ("D", "z", "delta_bias", "initial_state"):
        args.pop(drop)
    y_ref, s_ref = selective_scan_reference(**args, delta_softplus=False)
    y, s = selective_scan_chunked(**args, delta_softplus=False)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(s, s_ref)


def test_splitting_the_sequence_carries_the_state():
    args = random_inputs(2, 50, 4, 8, torch.float64)
    y_full, s_full = selective_scan_chunked(**args)
    first = {k: (v[:, :30] if v.dim() == 3 and k not in ("initial_state",) and v.shape[1] == 50 else v)
             for k, v in args.items()}
    y1, s1 = selective_scan_chunked(**first)
    second = {k: (v[:, 30:] if v.dim() == 3 and k != "initial_state" and v.shape[1] == 50 else v)
              for k, v in args.items()}
    second["initial_state"] = s1
    y2, s2 = selective_scan_chunked(**second)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full)
    torch.testing.assert_close(s2, s_full)


def test_low_precision_inputs_return_input_dtype_and_fp32_state():
    args = random_inputs(1, 12, 4, 8, torch.float32)
    bf16 = {k: v.to(torch.bfloat16) if k in ("u", "delta", "B", "C", "z") else v for k, v in args.items()}
    y, s = selective_scan_chunked(**bf16)
    y_ref, s_ref = selective_scan_reference(**bf16)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, block, group", [((1, 10, 3, 4), 4, 2), ((2, 37, 5, 6), 16, 4), ((2, 9, 4, 3), None, 8)])
@pytest.mark.parametrize("softplus", [True, False])
def test_gradients_match_reference(shape, block, group, softplus):
    args = random_inputs(*shape, torch.float64, seed=3)
    for v in args.values():
        v.requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    w_y = torch.randn(args["u"].shape, generator=g, dtype=torch.float64)
    w_s = torch.randn(args["initial_state"].shape, generator=g, dtype=torch.float64)

    def grads(fn, **kw):
        for v in args.values():
            v.grad = None
        y, s = fn(**args, delta_softplus=softplus, **kw)
        ((y * w_y).sum() + (s * w_s).sum()).backward()
        return {k: v.grad.clone() for k, v in args.items()}

    expected = grads(selective_scan_reference)
    got = grads(selective_scan_chunked, block=block, group=group)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-9, msg=name)


def test_gradients_without_initial_state_in_float32():
    args = random_inputs(2, 40, 8, 16, torch.float32, seed=5)
    args.pop("initial_state")
    for v in args.values():
        v.requires_grad_(True)
    out = {}
    for fn in (selective_scan_reference, selective_scan_chunked):
        for v in args.values():
            v.grad = None
        y, _ = fn(**args)
        y.square().sum().backward()
        out[fn] = {k: v.grad.clone() for k, v in args.items()}
    for name in args:
        torch.testing.assert_close(out[selective_scan_chunked][name], out[selective_scan_reference][name],
                                   rtol=1e-4, atol=1e-4, msg=name)


def test_dispatch(monkeypatch):
    assert resolve_impl("cpu") == "chunked"
    monkeypatch.setenv("HYMBA_SCAN_IMPL", "reference")
    assert resolve_impl("cpu") == "reference"
    args = random_inputs(1, 5, 2, 3, torch.float64)
    y, _ = selective_scan(**args)
    torch.testing.assert_close(y, selective_scan_reference(**args)[0])
    with pytest.raises(ValueError, match="unknown scan implementation"):
        resolve_impl("cpu", "magic")

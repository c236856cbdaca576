"""The environment switches (hymba.ops.switches): HYMBA_TRITON=0 sends every dispatcher to its
reference, read at each call (monkeypatching the environment takes effect at once)."""

from __future__ import annotations

import sys

import pytest
import torch

from hymba import ops
from hymba.ops import scan, switches


def _call_cases():
    """name -> (the kernel module its fast path imports, a call of the dispatcher on CPU tensors
    that the fast path would take under HYMBA_TRITON=force)."""
    r = torch.randn
    x, w = r(2, 16), r(16)
    keys = ops.DecodeKeys(pos=torch.tensor([[3], [5]]), slot_pos=None, first_pos=0)
    cos, sin = r(1, 1, 1, 8), r(1, 1, 1, 8)
    return {
        "rms_norm": ("norm", lambda: ops.rms_norm(x, w, 1e-6)),
        "rms_norm_parts": ("norm", lambda: ops.rms_norm_parts(x, (4, 4, 8), (w[:4], w[4:8], w[8:]), 1e-6)),
        "add_rms_norm": ("norm", lambda: ops.add_rms_norm(x, x, w, 1e-6)),
        "mean_of_rms_norms": ("norm", lambda: ops.mean_of_rms_norms(x, x, w, w, 1e-6)),
        "silu_mul": ("swiglu", lambda: ops.silu_mul(x, x)),
        "swiglu": ("linear", lambda: ops.swiglu(r(1, 16), r(8, 16), r(8, 16))),
        "linear": ("linear", lambda: ops.linear(r(1, 16), r(8, 16))),
        "apply_rotary": ("rotary", lambda: ops.apply_rotary(r(1, 2, 1, 8), cos, sin)),
        "causal_conv1d": ("conv", lambda: ops.causal_conv1d(r(2, 5, 16), r(16, 4))),
        "causal_conv1d_update": ("conv", lambda: ops.causal_conv1d_update(x, r(2, 16, 4), r(16, 4))),
        "store_kv_step": ("kv_store", lambda: ops.store_kv_step(
            torch.zeros(2, 1, 6, 8), torch.zeros(2, 1, 6, 8), r(2, 1, 1, 8), r(2, 1, 1, 8),
            torch.tensor([[1], [2]]), 0)),
        "ssm_decode_step": ("ssm_step", lambda: ops.ssm_decode_step(
            r(2, 16, 4), x, x, r(16, 4), r(2, 4), r(2, 4), w, x, w)),
        "decode_attention": ("decode_attention", lambda: ops.decode_attention(
            r(2, 2, 1, 8), r(1, 1, 2, 8), r(1, 1, 2, 8), r(2, 1, 6, 8), r(2, 1, 6, 8), keys)),
    }


CASES = _call_cases()


def _block_kernels(monkeypatch, op: str) -> None:
    """Pretend Triton is importable, but make importing the op's kernel module fail: a dispatcher
    that takes its fast path raises ImportError."""
    monkeypatch.setattr(switches, "triton_importable", lambda: True)
    monkeypatch.setitem(sys.modules, f"hymba.ops.{op}.triton", None)
    monkeypatch.delattr(sys.modules[f"hymba.ops.{op}"], "triton", raising=False)


@pytest.mark.parametrize("name", list(CASES))
def test_triton_off_takes_the_reference(name, monkeypatch):
    op, call = CASES[name]
    _block_kernels(monkeypatch, op)
    monkeypatch.setenv("HYMBA_TRITON", "force")
    with pytest.raises(ImportError):
        call()  # the fast path would run here
    monkeypatch.setenv("HYMBA_TRITON", "0")
    call()  # the reference runs


def test_triton_off_refuses_the_fused_mamba_step(monkeypatch):
    monkeypatch.setattr(switches, "triton_importable", lambda: True)
    r = torch.randn
    args = (r(1, 16), r(1, 16), r(1, 16, 4), r(1, 16, 4), r(16, 4), r(16), r(10, 16), None, 1e-6, r(16, 2), r(16),
            r(16, 4), r(16))
    monkeypatch.setenv("HYMBA_TRITON", "force")
    assert ops.fused_mamba_step_supported(*args)
    monkeypatch.setenv("HYMBA_TRITON", "0")
    assert not ops.fused_mamba_step_supported(*args)


def test_triton_off_switches_off_the_triton_scan(monkeypatch):
    monkeypatch.setattr(scan, "triton_available", lambda: True)
    monkeypatch.delenv("HYMBA_SCAN_IMPL", raising=False)
    monkeypatch.delenv("HYMBA_TRITON", raising=False)
    assert scan.resolve_impl("cuda") == "triton"
    monkeypatch.setenv("HYMBA_TRITON", "0")
    assert scan.resolve_impl("cuda") == "chunked"
    monkeypatch.setenv("HYMBA_SCAN_IMPL", "reference")
    assert scan.resolve_impl("cuda") == "reference"
    monkeypatch.setenv("HYMBA_SCAN_IMPL", "triton")
    with pytest.raises(ValueError, match="HYMBA_TRITON=0"):
        scan.resolve_impl("cuda")
    monkeypatch.setenv("HYMBA_SCAN_IMPL", "magic")
    with pytest.raises(ValueError, match="HYMBA_SCAN_IMPL"):
        scan.resolve_impl("cpu")


def test_triton_off_switches_off_flex_attention(monkeypatch):
    monkeypatch.delenv("HYMBA_TRITON", raising=False)
    monkeypatch.delenv("HYMBA_ATTN_IMPL", raising=False)
    assert switches.flex_attention_allowed()
    monkeypatch.setenv("HYMBA_TRITON", "0")
    assert not switches.flex_attention_allowed()
    monkeypatch.setenv("HYMBA_TRITON", "1")
    monkeypatch.setenv("HYMBA_ATTN_IMPL", "sdpa")
    assert not switches.flex_attention_allowed()


def test_pdl_switches(monkeypatch):
    monkeypatch.delenv("HYMBA_PDL", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert switches.pdl_enabled() and not switches.interpreting()
    monkeypatch.setenv("HYMBA_PDL", "0")
    assert not switches.pdl_enabled()
    monkeypatch.setenv("HYMBA_PDL", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert switches.interpreting() and not switches.pdl_enabled()
    assert not switches.pdl_supported(torch.device("cpu"))


def test_triton_modes(monkeypatch):
    x = torch.randn(4)
    monkeypatch.setattr(switches, "triton_importable", lambda: True)
    for value, mode, on_cpu in (("1", "on", False), ("0", "off", False), ("force", "force", True)):
        monkeypatch.setenv("HYMBA_TRITON", value)
        assert switches.triton_mode() == mode
        assert switches.use_triton(x) == on_cpu
    assert not switches.use_triton(x.double())  # the kernels compute in float32
    assert not switches.use_triton(x.requires_grad_())  # autograd, and no backward kernel
    assert switches.use_triton(x, differentiable=True)

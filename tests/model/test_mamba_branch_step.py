"""The SSM branch's decode step (MambaBranch.step): the same stages as its prefill, one token at a
time, and the fused kernels where the op offers them."""

from __future__ import annotations

import pytest
import torch

from hymba import HymbaConfig
from hymba.model.layout import SequenceLayout
from hymba.model.ssm import MambaBranch

CONFIG = dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, num_memory_tokens=0, global_attn_idx=[0], kv_reuse_group=[], torch_dtype="float32",
)


def _branch(**changes) -> MambaBranch:
    torch.manual_seed(0)
    branch = MambaBranch(HymbaConfig(**{**CONFIG, **changes}), layer_idx=0)
    with torch.no_grad():
        for name, p in branch.named_parameters():
            if name not in ("A_log", "D"):
                p.add_(torch.randn_like(p) * 0.3)
    return branch


class _States:
    """A cache of one layer's conv and SSM state, as MambaBranch.forward reads and writes it."""

    def __init__(self, conv: torch.Tensor, ssm: torch.Tensor) -> None:
        self.conv, self.ssm = conv, ssm

    def conv_state(self, layer: int) -> torch.Tensor:
        return self.conv

    def ssm_state(self, layer: int) -> torch.Tensor:
        return self.ssm

    def store_ssm(self, layer: int, x: torch.Tensor, state: torch.Tensor) -> None:
        raise AssertionError("a single-token call updates the states in place")


@pytest.mark.parametrize("inner_norms", [True, False])
def test_steps_equal_the_prefill(inner_norms):
    """Token by token, step() gives the prefill's outputs (the scan over the whole sequence)."""
    branch = _branch(mamba_inner_layernorms=inner_norms).double()
    d, n, k = branch.D.shape[0], branch.d_state, branch.conv1d.weight.shape[-1]
    b, length = 2, 7
    x, z = torch.randn(2, b, length, d, dtype=torch.float64)
    with torch.no_grad():
        want = branch(x, z, SequenceLayout(torch.arange(length), None, 0))
        conv = torch.zeros(b, d, k, dtype=torch.float64)
        ssm = torch.zeros(b, d, n, dtype=torch.float64)
        got = torch.stack([branch.step(x[:, t], z[:, t], conv, ssm) for t in range(length)], 1)
    torch.testing.assert_close(got, want)


def test_forward_of_one_cached_token_is_the_step():
    branch = _branch()
    d, n, k = branch.D.shape[0], branch.d_state, branch.conv1d.weight.shape[-1]
    conv, ssm = torch.randn(3, d, k), torch.randn(3, d, n)
    x, z = torch.randn(2, 3, 1, d)
    with torch.no_grad():
        want = branch.step(x[:, 0], z[:, 0], conv.clone(), ssm.clone())
        cache = _States(conv, ssm)
        got = branch(x, z, SequenceLayout(torch.tensor([5]), None, 0, state=cache))
    assert torch.equal(got[:, 0], want)


@pytest.mark.gpu
@pytest.mark.parametrize("rows, fused", [(1, True), (4, True), (5, False)])
def test_step_takes_the_fused_kernels_for_a_few_rows(rows, fused, triton_device, monkeypatch):
    """With the Triton kernels on, step() runs the fused two-kernel op up to FUSED_MAX_ROWS rows
    and the stage kernels beyond; both give the references' result."""
    from hymba import ops

    if triton_device == "cpu":
        monkeypatch.setenv("HYMBA_TRITON", "force")
    branch = _branch(hidden_size=64).to(triton_device)
    d, n, k = branch.D.shape[0], branch.d_state, branch.conv1d.weight.shape[-1]
    calls = []
    real = ops.fused_mamba_step
    monkeypatch.setattr(ops, "fused_mamba_step", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    conv, ssm = torch.randn(rows, d, k, device=triton_device), torch.randn(rows, d, n, device=triton_device)
    ref_conv, ref_ssm = conv.clone(), ssm.clone()
    with torch.no_grad():
        for _ in range(2):
            x, z = torch.randn(2, rows, d, device=triton_device)
            got = branch.step(x, z, conv, ssm)
            with monkeypatch.context() as m:
                m.setenv("HYMBA_TRITON", "0")
                want = branch.step(x, z, ref_conv, ref_ssm)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ssm, ref_ssm, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(conv, ref_conv)
    assert calls == ([rows, rows] if fused else [])

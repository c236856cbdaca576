"""The model reproduces NVIDIA's reference logits and hidden states (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hymba import HymbaForCausalLM


@pytest.fixture(scope="module")
def reference(fixture_dir):
    model = HymbaForCausalLM.from_pretrained(fixture_dir, dtype=torch.float32)
    return model, load_file(fixture_dir / "inputs.safetensors"), load_file(fixture_dir / "expected.safetensors")


@pytest.mark.parametrize("impl", ["chunked", "reference"])
def test_logits_match_reference(reference, impl, monkeypatch):
    monkeypatch.setenv("HYMBA_SCAN_IMPL", impl)
    model, inputs, expected = reference
    with torch.no_grad():
        for name, ids in inputs.items():
            logits = model(ids).logits
            assert logits.shape == expected[name].shape
            err = (logits - expected[name]).abs().max().item()
            assert err <= 1e-4, f"{name}: max abs error {err:.2e}"


def test_hidden_states_match_reference(reference, fixture_dir):
    model, inputs, _ = reference
    debug = load_file(fixture_dir / "debug_hidden_states.safetensors")
    with torch.no_grad():
        out = model(inputs["batch3_len80"], output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    for i, h in enumerate(out.hidden_states):
        torch.testing.assert_close(h, debug[f"hidden_states.{i}"], rtol=1e-4, atol=1e-4)


def test_loss_is_cross_entropy_of_shifted_logits(reference):
    model, inputs, expected = reference
    ids = inputs["len16"]
    labels = ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        loss = model(ids, labels=labels).loss
    logits = expected["len16"]
    ref = torch.nn.functional.cross_entropy(logits[0, 2:-1], ids[0, 3:])
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)

"""Instrumented forward: attention mass shares and branch magnitudes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from hymba import HymbaForCausalLM, ops
from hymba.cli import main
from hymba.eval.analysis import analyze, attention_shares, instrument


def test_instrumented_forward_keeps_logits_and_restores_ops():
    torch.manual_seed(0)
    model = HymbaForCausalLM(tiny_config()).eval()
    ids = torch.randint(3, 320, (1, 40))
    plain = model(ids).logits
    original = ops.attention
    with instrument(model) as records:
        instrumented = model(ids).logits
    assert ops.attention is original
    torch.testing.assert_close(instrumented, plain, atol=1e-5, rtol=1e-5)
    assert sorted(records) == [0, 1, 2, 3]
    summary = analyze(model, ids)
    for row in summary["layers"]:
        share = row["attention_share"]
        assert sum(share.values()) == pytest.approx(1.0, abs=1e-5)
        assert all(v >= 0 for v in share.values())
        mags = row["branch_magnitude"]
        assert set(mags) == {"attention", "ssm"}
        assert set(mags["ssm"]) == {"before_norm", "after_norm", "norm_weight"}
    assert model(ids).logits.equal(plain)  # hooks are gone


def test_shares_on_a_known_distribution():
    # 2 meta tokens + 3 real tokens; uniform attention over the visible keys.
    mask = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    probs = (mask / mask.sum(-1, keepdim=True))[None, None]
    shares = attention_shares(probs, num_meta=2)
    # queries 2,3,4 see 3,4,5 keys: meta 2/3, 2/4, 2/5; first 0 (self), 1/4, 1/5; self 1/3,1/4,1/5
    assert shares["meta"] == pytest.approx((2 / 3 + 2 / 4 + 2 / 5) / 3)
    assert shares["first"] == pytest.approx((0 + 1 / 4 + 1 / 5) / 3)
    assert shares["self"] == pytest.approx((1 / 3 + 1 / 4 + 1 / 5) / 3)
    assert shares["other"] == pytest.approx((0 + 0 + 1 / 5) / 3)


def test_ablation_variants_have_only_their_branches():
    torch.manual_seed(0)
    ids = torch.randint(3, 320, (1, 12))
    ssm = analyze(HymbaForCausalLM(tiny_config(mixer_type="ssm")).eval(), ids)
    assert all(r["attention_share"] is None and set(r["branch_magnitude"]) == {"ssm"} for r in ssm["layers"])
    attn = analyze(HymbaForCausalLM(tiny_config(mixer_type="attention", num_memory_tokens=0)).eval(), ids)
    assert all(r["attention_share"]["meta"] == 0 for r in attn["layers"])


def test_cli_writes_json_and_plots(tiny_checkpoint, tmp_path):
    pytest.importorskip("matplotlib")
    text = tmp_path / "t.txt"
    text.write_text("Meta tokens are prepended to every sequence. " * 5)
    out = tmp_path / "out"
    assert main(["analyze", "--model", str(tiny_checkpoint), "--text", str(text), "--out", str(out),
                 "--device", "cpu"]) == 0
    summary = json.loads((out / "analysis.json").read_text())
    assert len(summary["layers"]) == 4 and summary["num_meta"] == 4
    assert (out / "attention_shares.png").stat().st_size > 1000
    assert (out / "branch_magnitudes.png").stat().st_size > 1000

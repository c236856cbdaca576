from __future__ import annotations

import pytest
from trainkit import SMALL_MODEL

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.train.optim import Schedule, build_optimizer, param_groups


def test_no_weight_decay_on_norms_biases_meta_tokens_a_log_d():
    model = HymbaForCausalLM(HymbaConfig.from_preset("tiny", **SMALL_MODEL))
    decay, keep = param_groups(model, 0.1)
    ids = {id(p) for p in keep["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in ids}
    decayed = {n for n, p in model.named_parameters() if id(p) not in ids}
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    for suffix in ("memory_tokens", "A_log", ".D", "layernorm.weight", "norm.weight", ".bias"):
        assert any(n.endswith(suffix) for n in names), suffix
        assert not any(n.endswith(suffix) for n in decayed), suffix
    assert "model.embed_tokens.weight" in decayed
    assert any(n.endswith("in_proj.weight") for n in decayed)
    opt = build_optimizer(model, 1e-3, 0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_wsd_shape():
    s = Schedule("wsd", lr=1.0, total_steps=100, warmup=0.05, min_lr=1e-5, decay_fraction=0.2)
    lrs = [s(i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.2) and lrs[4] == 1.0  # 5 warmup steps
    assert all(lr == 1.0 for lr in lrs[5:80])  # stable
    assert all(a > b for a, b in zip(lrs[79:], lrs[80:]))  # decay over the last 20%
    assert lrs[-1] == pytest.approx(1e-5)


def test_cosine_shape():
    s = Schedule("cosine", lr=1.0, total_steps=50, warmup=5, min_lr=0.1)
    lrs = [s(i) for i in range(50)]
    assert lrs[4] == 1.0 and lrs[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:]))
    assert lrs[27] == pytest.approx(0.55, abs=0.03)  # halfway


def test_bad_schedule():
    with pytest.raises(ValueError, match="schedule"):
        Schedule("linear", 1.0, 10)

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


def _lrs(schedule, steps):
    return [schedule(i) for i in steps]


def test_extending_a_finished_wsd_run_stays_at_the_floor_unless_rewarmed():
    from hymba.train.optim import continue_schedule

    done = Schedule("wsd", lr=1e-3, total_steps=100, warmup=0.01, min_lr=1e-5)
    longer = Schedule("wsd", lr=1e-3, total_steps=200, warmup=0.01, min_lr=1e-5)
    assert longer(100) == 1e-3  # what a resume used to do: the rate jumps back to the peak
    kept = continue_schedule(done, 100, longer)
    assert _lrs(kept, range(100)) == _lrs(done, range(100))
    assert _lrs(kept, range(99, 200)) == [pytest.approx(1e-5)] * 101
    rewarmed = continue_schedule(done, 100, longer, rewarm=True)
    lrs = _lrs(rewarmed, range(100, 200))
    assert rewarmed.start == 100 and lrs[0] == pytest.approx(1e-3)  # 1% of 100 steps: one warmup step
    assert lrs[:80] == [pytest.approx(1e-3)] * 80 and lrs[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(lrs[79:], lrs[80:]))
    # a resume in the middle of the decay finishes that decay, then holds the floor
    mid = continue_schedule(done, 90, longer)
    assert _lrs(mid, range(90, 100)) == _lrs(done, range(90, 100)) and mid(150) == pytest.approx(1e-5)


def test_a_wsd_run_resumed_before_its_decay_moves_the_decay_to_the_new_end():
    from hymba.train.optim import continue_schedule

    first = Schedule("wsd", lr=1.0, total_steps=100, warmup=0.05, min_lr=0.0)
    planned = Schedule("wsd", lr=1.0, total_steps=300, warmup=0.05, min_lr=0.0)
    for step in (3, 50):  # in the warmup (its 5 steps are kept, not 5% of 300) and in the stable phase
        s = continue_schedule(first, step, planned)
        assert _lrs(s, range(step + 1)) == _lrs(first, range(step + 1))
        assert s(239) == 1.0 and s(240) < 1.0 and s(299) == 0.0  # decay over the last 20% of 300
    assert continue_schedule(first, 50, first) == first  # same max_steps: the same schedule


def test_cosine_resume_rule():
    from hymba.train.optim import continue_schedule

    first = Schedule("cosine", lr=1.0, total_steps=50, warmup=5, min_lr=0.1)
    planned = Schedule("cosine", lr=1.0, total_steps=100, warmup=5, min_lr=0.1)
    assert continue_schedule(first, 3, planned)(50) > 0.5  # still warming up: the cosine stretches
    kept = continue_schedule(first, 20, planned)  # decaying: it goes on, then holds min_lr
    assert _lrs(kept, range(50)) == _lrs(first, range(50)) and kept(80) == pytest.approx(0.1)

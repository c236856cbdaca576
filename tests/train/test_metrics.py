"""The metrics log: JSON lines, and TensorBoard scalars when asked for."""

from __future__ import annotations

import json
import os

import pytest

from hymba.train.metrics import MetricsLog


def test_jsonl_and_tensorboard(tmp_path):
    with MetricsLog(str(tmp_path)) as log:
        log.write({"step": 1, "loss": 2.5, "lr": 1e-3})
    with MetricsLog(str(tmp_path)) as log:  # appends, as a resumed run does
        log.write({"step": 2, "loss": 2.0, "val_loss": 2.2})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert not os.path.exists(tmp_path / "tensorboard")

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLog(str(tmp_path / "tb"), tensorboard=True) as log:
        for step, loss in ((1, 3.0), (2, 2.5)):
            log.write({"step": step, "loss": loss, "lr": 1e-3, "note": "text is skipped"})
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["train/loss", "train/lr"]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 3.0), (2, 2.5)]


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ImportError, match="pip install 'hymba\\[train\\]'"):
        MetricsLog(str(tmp_path), tensorboard=True)

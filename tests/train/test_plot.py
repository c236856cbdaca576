from __future__ import annotations

import json

import pytest

from hymba.cli import main


def test_hymba_plot_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    records = [{"step": i, "loss": 8.0 - i * 0.1, "lr": 1e-3} for i in range(1, 11)]
    records[4]["val_loss"] = 7.6
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hymba_plot_without_metrics(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err

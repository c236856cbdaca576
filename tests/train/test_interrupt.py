"""Ctrl-C during training saves the step it finishes; resuming says where it resumes; the
learning rate of a resumed run with another max_steps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from trainkit import SMALL_MODEL, small_args

from hymba import HymbaForCausalLM
from hymba.cli import main
from hymba.train import TrainInterrupted, train
from hymba.train.checkpointing import list_checkpoints, read_trainer_state


def _logged(out) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_sigint_saves_a_checkpoint_and_prints_the_resume_command(corpus, tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": SMALL_MODEL}))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hymba", "train", "--config", str(config), "--data", str(corpus),
           "--out", str(out), "--max-steps", "100000", "--seq-len", "16", "--batch-size", "2",
           "--save-every", "100000", "--eval-every", "100000", "--sample-tokens", "0", "--no-progress",
           "--device", "cpu", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        metrics = out / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the run did not log 3 steps in 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    [(step, path)] = list_checkpoints(out)
    assert step >= 3 and read_trainer_state(path)["step"] == step
    assert f"interrupted at step {step}; resume with: hymba train --resume {out}" in stderr.splitlines()
    assert "Ctrl-C again aborts at once" in stderr
    assert [r["step"] for r in _logged(out)] == list(range(1, step + 1))
    HymbaForCausalLM.from_pretrained(path)  # a complete released-format model
    assert not os.path.exists(out / "final")

    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--max-steps", str(step + 2)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == f"resuming from step {step} of {out}"
    assert "trained" in printed and f"now at step {step + 2}" in printed
    assert [r["step"] for r in _logged(out)] == list(range(1, step + 3))


def _sigint_at_forward(monkeypatch, call: int, signals: int) -> None:
    real_forward = HymbaForCausalLM.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        if self.training:
            calls["n"] += 1
            if calls["n"] == call:
                for _ in range(signals):
                    os.kill(os.getpid(), signal.SIGINT)
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(HymbaForCausalLM, "forward", forward)


def test_first_interrupt_finishes_the_step_and_saves_it(corpus, tmp_path, monkeypatch, capsys):
    _sigint_at_forward(monkeypatch, call=3, signals=1)
    out = tmp_path / "run"
    with pytest.raises(TrainInterrupted) as info:
        train(small_args(corpus, out, max_steps=10, save_every=100))
    assert info.value.step == 3 and info.value.checkpoint == str(out / "checkpoint-00000003")
    assert [s for s, _ in list_checkpoints(out)] == [3]
    assert "stopping at the end of this step and saving a checkpoint" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    monkeypatch.undo()
    summary = train(small_args(corpus, out, max_steps=5, save_every=100, resume=str(out)))
    assert summary["trained_steps"] == 2


def test_second_interrupt_aborts_at_once(corpus, tmp_path, monkeypatch):
    _sigint_at_forward(monkeypatch, call=3, signals=2)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as info:
        train(small_args(corpus, out, max_steps=10, save_every=2))
    assert not isinstance(info.value, TrainInterrupted)
    assert [s for s, _ in list_checkpoints(out)] == [2]  # step 3 was not finished, nothing saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_extending_a_finished_run_keeps_the_floor_unless_rewarmed(corpus, tmp_path, capsys):
    done = tmp_path / "done"
    train(small_args(corpus, done, max_steps=4))  # WSD: the last step is at min_lr 1e-5
    assert _logged(done)[-1]["lr"] == pytest.approx(1e-5)
    kept, rewarmed = tmp_path / "kept", tmp_path / "rewarmed"
    for folder in (kept, rewarmed):
        shutil.copytree(done, folder)
    capsys.readouterr()
    train(small_args(corpus, kept, max_steps=8, resume=str(kept)))
    printed = capsys.readouterr().out
    assert f"resuming from step 4 of {kept}" in printed
    assert "steps 5..8 train at min_lr 1e-05" in printed
    assert [r["lr"] for r in _logged(kept)[4:]] == [pytest.approx(1e-5)] * 4
    train(small_args(corpus, rewarmed, max_steps=8, resume=str(rewarmed), rewarm=True))
    assert "a new wsd phase from step 4 to 8 (--rewarm)" in capsys.readouterr().out
    lrs = [r["lr"] for r in _logged(rewarmed)[4:]]
    assert lrs[:3] == [pytest.approx(1e-2)] * 3 and lrs[3] == pytest.approx(1e-5)  # 20% of 4: one step
    # the new phase is saved with the checkpoint: a later exact resume keeps it
    state = read_trainer_state(list_checkpoints(rewarmed)[-1][1])
    assert state["schedule"] == {"start": 4, "total_steps": 8, "warmup": 0.01}
    assert state["args"]["rewarm"] is False


def test_rewarm_needs_resume(corpus, tmp_path):
    from hymba.train import TrainError

    with pytest.raises(TrainError, match="rewarm .* needs resume"):
        train(small_args(corpus, tmp_path / "run", rewarm=True))

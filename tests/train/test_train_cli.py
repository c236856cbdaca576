from __future__ import annotations

import json
import os

import pytest
from trainkit import SMALL_MODEL

from hymba import HymbaForCausalLM
from hymba.cli import main


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"model": SMALL_MODEL, "seq-len": 16, "batch_size": 2, "max_steps": 50,
                                "eval_every": 2, "save_every": 2, "sample_tokens": 0}))
    return path


def test_hymba_train_flags_override_config_file(corpus, config_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", str(config_file), "--data", str(corpus), "--out", str(out),
            "--max-steps", "3", "--sample-tokens", "5", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "unigram baseline" in printed and "sample:" in printed
    with open(out / "metrics.jsonl", encoding="utf-8") as fh:
        assert [json.loads(line)["step"] for line in fh] == [1, 2, 3]
    model = HymbaForCausalLM.from_pretrained(out / "final")
    assert model.config.hidden_size == SMALL_MODEL["hidden_size"]
    assert os.path.isfile(out / "final" / "tokenizer.json")

    # the same command again would overwrite the run: refused, nothing touched
    before = sorted(os.listdir(out))
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before

    # resume takes the saved settings; only --max-steps changes
    assert main(["train", "--resume", str(out), "--max-steps", "4", "--no-progress"]) == 0
    assert "for 1 step (resumed; now at step 4) in" in capsys.readouterr().out
    with open(out / "metrics.jsonl", encoding="utf-8") as fh:
        assert [json.loads(line)["step"] for line in fh] == [1, 2, 3, 4]


@pytest.mark.parametrize("extra, message", [
    (["--data", "/no/such/dir"], "data path /no/such/dir does not exist"),
    (["--seq-len", "100"], "max_position_embeddings"),
    (["--tokenizer", "/no/such/tok"], "tokenizer folder /no/such/tok does not exist"),
    (["--init-from", "/no/such/ckpt"], "init_from folder /no/such/ckpt does not exist"),
    (["--sample-tokens", "5000"], "sample_prompt + sample_tokens"),
    (["--min-lr", "-1"], "min_lr must be a non-negative number"),
    (["--warmup", "-3"], "warmup must be a non-negative number"),
    (["--val-fraction", "1"], "val_fraction must be a number in [0, 1)"),
    (["--device", "foo"], "device 'foo' is not a device"),
    (["--preset", "hymba-125m", "--init-from", "/x"], "--preset shapes a from-scratch run"),
])
def test_hymba_train_errors_are_one_line(corpus, config_file, tmp_path, capsys, extra, message):
    argv = ["train", "--config", str(config_file), "--data", str(corpus), "--out", str(tmp_path / "r"),
            "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not os.path.exists(tmp_path / "r")


def test_bad_config_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 3\nlearning_rate: 1\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "unknown training setting(s): learning_rate" in capsys.readouterr().err


def test_config_file_values_are_type_checked(corpus, tmp_path, capsys):
    path = tmp_path / "c.yaml"  # YAML 1.1 reads 1e-3 as text: it is taken as the number
    model = {**SMALL_MODEL, "rope_theta": "1e4"}
    path.write_text(f"lr: 1e-3\nmax_steps: '2'\nseq_len: 16\nbatch_size: 2\nsample_tokens: 0\n"
                    f"model: {json.dumps(model)}\n")
    assert main(["train", "--config", str(path), "--data", str(corpus), "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 0
    assert HymbaForCausalLM.from_pretrained(tmp_path / "r" / "final").config.rope_theta == 1e4
    for text, message in (("lr: fast\n", "lr must be a positive number, got 'fast'"),
                          ("max_steps: 2.5\n", "max_steps must be a positive integer, got 2.5"),
                          ("progress: 'no'\n", "progress must be true or false")):
        path.write_text(text)
        assert main(["train", "--config", str(path), "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


def test_a_damaged_training_state_is_named(corpus, config_file, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--config", str(config_file), "--data", str(corpus), "--out", str(out), "--no-progress"]
    assert main([*base, "--max-steps", "2"]) == 0
    state = out / "checkpoint-00000002"
    (state / "optimizer.pt").write_bytes(b"garbage")
    assert main(["train", "--resume", str(out), "--max-steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "optimizer.pt is corrupt" in err and "weights_only" not in err and "\n" not in err
    (state / "trainer_state.json").write_text("{broken")
    assert main(["train", "--resume", str(out), "--max-steps", "3"]) == 2
    assert "trainer_state.json is corrupt" in capsys.readouterr().err


def test_overwrite_replaces_a_run_and_resume_needs_a_checkpoint(corpus, config_file, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--config", str(config_file), "--data", str(corpus), "--out", str(out), "--no-progress"]
    assert main([*base, "--max-steps", "4"]) == 0
    assert main([*base, "--max-steps", "2", "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == ["checkpoint-00000002", "final", "metrics.jsonl"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", str(empty)]) == 2
    assert "no complete checkpoint to resume from" in capsys.readouterr().err


def test_resume_from_another_folder_with_relative_paths(corpus, config_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(config_file), "--data", corpus.name, "--out", "run",
                 "--max-steps", "2", "--no-progress"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(tmp_path / "run"), "--max-steps", "3", "--no-progress"]) == 0
    assert os.path.isdir(tmp_path / "run" / "checkpoint-00000003")

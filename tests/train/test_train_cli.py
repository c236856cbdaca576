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
    with open(out / "metrics.jsonl", encoding="utf-8") as fh:
        assert [json.loads(line)["step"] for line in fh] == [1, 2, 3, 4]


@pytest.mark.parametrize("extra, message", [
    (["--data", "/no/such/dir"], "data path /no/such/dir does not exist"),
    (["--seq-len", "100"], "max_position_embeddings"),
    (["--tokenizer", "/no/such/tok"], "no tokenizer.json"),
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

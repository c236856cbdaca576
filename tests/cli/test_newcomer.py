"""What a new user meets first (issue 37): save_pretrained round trips, file modes, config and
--model hints, --help lines with defaults, a lazy ``import hymba``, and small output fixes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from hymba import HymbaConfig, HymbaForCausalLM, load_tokenizer
from hymba.cli import build_parser, main
from hymba.cli.bench import format_detail
from hymba.config import ConfigWarning
from hymba.train.bpe import bundled_data_dir

REPO = Path(__file__).resolve().parents[2]


def _tiny_model(vocab_size: int) -> HymbaForCausalLM:
    torch.manual_seed(0)
    config = HymbaConfig.from_preset("tiny", vocab_size=vocab_size)
    return HymbaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def saved_copy(tmp_path_factory) -> Path:
    """A model and the bundled tokenizer saved side by side with their save_pretrained methods,
    as a transformers user would."""
    folder = tmp_path_factory.mktemp("my-copy")
    tokenizer = load_tokenizer(bundled_data_dir())
    _tiny_model(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_saved_copy_reloads_with_the_same_tokenizer(saved_copy):
    original, again = load_tokenizer(bundled_data_dir()), load_tokenizer(saved_copy)
    text = "To be, or not to be: that is the question."
    assert again.encode(text) == original.encode(text)
    assert again.chat_template == original.chat_template and again.eos_token_id == original.eos_token_id
    assert sorted(os.listdir(saved_copy)) == ["config.json", "model.safetensors", "tokenizer.json",
                                              "tokenizer_config.json"]


@pytest.mark.parametrize("command", [
    "generate --model MODEL --prompt KING. --max-new-tokens 4 --device cpu",
    "generate --chat --model MODEL --prompt Who? --max-new-tokens 4 --device cpu",
    "info --model MODEL",
    "cache-size --model MODEL --seq 100",
    "bench recall --model MODEL --task passkey --lengths 64 --samples 1 --depths 0.5 --device cpu",
])
def test_cli_commands_work_on_the_saved_copy(saved_copy, command, capsys):
    assert main([str(saved_copy) if word == "MODEL" else word for word in command.split()]) == 0
    assert capsys.readouterr().out.strip()


def test_eval_analyze_and_chat_work_on_the_saved_copy(saved_copy, tmp_path, capsys, monkeypatch):
    text = tmp_path / "text.txt"
    text.write_text("Now is the winter of our discontent made glorious summer by this sun of York.\n")
    assert main(["eval", "ppl", "--model", str(saved_copy), "--data", str(text), "--device", "cpu"]) == 0
    assert main(["analyze", "--model", str(saved_copy), "--text", str(text), "--no-plots",
                 "--out", str(tmp_path / "analysis")]) == 0
    assert (tmp_path / "analysis" / "analysis.json").is_file()
    monkeypatch.setattr(sys, "stdin", _Lines("Hello there\n/exit\n"))
    assert main(["chat", "--model", str(saved_copy), "--max-new-tokens", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "you> Hello there" in out and "hymba> " in out
    assert f"wrote {tmp_path / 'analysis' / 'analysis.json'}" in out  # one slash, whatever --out ends with


class _Lines:
    """stdin for the chat REPL: given lines, not a terminal."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines(keepends=True)

    def readline(self) -> str:
        return self._lines.pop(0) if self._lines else ""

    def isatty(self) -> bool:
        return False


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        tokenizer = load_tokenizer(bundled_data_dir())
        model = _tiny_model(len(tokenizer))
        model.save_pretrained(tmp_path / "one")
        model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
        tokenizer.save_pretrained(tmp_path / "one")
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".safetensors") for p in files) and len(files) >= 6
    assert len([p for p in files if p.parent.name == "sharded" and p.suffix == ".safetensors"]) > 1
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name


def test_misspelled_config_key_warns_with_the_closest_field(tmp_path):
    data = HymbaConfig.from_preset("tiny").to_dict()
    data["hiden_size"] = 96
    data["my_note"] = "kept"  # far from every field: no warning
    with pytest.warns(ConfigWarning, match="'hiden_size'.*did you mean 'hidden_size'") as caught:
        config = HymbaConfig.from_dict(data)
    assert len(caught) == 1
    assert config.hidden_size == HymbaConfig.from_preset("tiny").hidden_size  # ignored
    assert config.to_dict()["hiden_size"] == 96 and config.to_dict()["my_note"] == "kept"  # round trip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HymbaConfig.from_dict(HymbaConfig.from_preset("hymba-1.5b").to_dict())  # a clean config is silent


def test_cli_prints_the_config_warning_as_one_line(tmp_path, capsys):
    data = HymbaConfig.from_preset("tiny").to_dict()
    data["hiden_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert main(["info", "--model", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.strip() == ("hymba info: warning: config key 'hiden_size' is not a Hymba setting and is "
                           "ignored; did you mean 'hidden_size'?")


def test_model_hints_for_a_run_folder_and_a_file(tmp_path, saved_copy, capsys):
    run = tmp_path / "hymba-run"
    for name in ("checkpoint-00000080", "checkpoint-00000160", "final"):
        (run / name).mkdir(parents=True)
        (run / name / "config.json").write_text("{}")
    assert main(["generate", "--model", str(run), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert f"{run} is a training run folder" in err and f"use {run / 'final'} or" in err
    assert f"{run / 'checkpoint-00000160'} (the latest checkpoint)" in err
    assert main(["info", "--model", str(saved_copy / "config.json")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"hymba info: error: --model {saved_copy / 'config.json'} is a file; pass the "
                           f"checkpoint folder that holds it: {saved_copy}")
    assert main(["info", "--model", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_tokenize_leaves_no_folder_behind_on_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no text field"}\n')
    out = tmp_path / "tokens"
    assert main(["tokenize", "--data", str(bad), "--out", str(out)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()  # an empty folder the user made stays, empty
    assert main(["tokenize", "--data", str(bad), "--out", str(out)]) == 2
    assert out.is_dir() and not list(out.iterdir())


def test_import_of_the_cli_does_not_import_torch():
    code = ("import sys, hymba, hymba.cli; hymba.cli.build_parser(); assert 'torch' not in sys.modules; "
            "from hymba import HymbaForCausalLM; assert 'torch' in sys.modules")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def _flags(parser: argparse.ArgumentParser, path: list[str]):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, [*path, name])
        elif action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield " ".join(path), action


def test_every_flag_has_a_help_line_with_its_default():
    missing = []
    for command, action in _flags(build_parser(), []):
        text = action.help or ""
        on_off = action.nargs == 0
        shown = "default" in text or (action.default not in (None, [], argparse.SUPPRESS) and not on_off)
        if not text.strip() or not (action.required or on_off or shown):
            missing.append(f"{command} {action.option_strings[-1]}")
    assert not missing, missing
    out = subprocess.run([sys.executable, "-m", "hymba", "generate", "--help"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}).stdout
    assert "(default: 128)" in out and "(default: 1.0)" in out


def test_restated_defaults_match_their_sources():
    from hymba.cli.ablate import BUDGET_NAMES, VARIANT_KEYS
    from hymba.cli.train import DEFAULTS
    from hymba.eval.ablation import BUDGETS, VARIANTS
    from hymba.train import TrainArgs

    assert list(BUDGET_NAMES) == list(BUDGETS) and list(VARIANT_KEYS) == [v[0] for v in VARIANTS]
    fields = {f.name: f.default for f in dataclasses.fields(TrainArgs)}
    for name, shown in DEFAULTS.items():
        if fields[name] is not None and not isinstance(fields[name], dataclasses._MISSING_TYPE):
            assert shown == fields[name], name


def test_cache_size_labels_a_batch_total(capsys):
    assert main(["cache-size", "--preset", "tiny", "--seq", "100", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "total for the batch of 8" in out and "total per request" not in out


def test_recall_detail_column_is_readable():
    assert format_detail({"per_query": [1.0, 0.5]}) == "per query 1.00 0.50"
    assert format_detail({"per_depth": {"0.0": 1.0, "0.5": 0.25}}) == "per depth 0: 1.00, 0.5: 0.25"


def test_an_adapter_folder_points_to_merge_lora(tmp_path, capsys):
    from hymba.cli import main

    (tmp_path / "adapter_config.json").write_text("{}")
    assert main(["info", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "LoRA adapter" in err and "hymba merge-lora --adapter" in err

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from trainkit import small_args

from hymba import HymbaForCausalLM
from hymba.train import DataError, TrainError, train
from hymba.train.checkpointing import list_checkpoints


def logged_losses(out) -> dict[int, float]:
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as fh:
        return {r["step"]: r["loss"] for r in map(json.loads, fh)}


@pytest.fixture
def reference_run(corpus, tmp_path):
    """An uninterrupted 4-step run keeping every checkpoint (steps 2 and 4)."""
    summary = train(small_args(corpus, tmp_path / "ref"))
    return summary


def _interrupted_copy(reference_run, tmp_path):
    """A run folder as a run killed right after its step-2 checkpoint would leave it."""
    out = tmp_path / "cut"
    os.makedirs(out)
    shutil.copytree(os.path.join(reference_run["out"], "checkpoint-00000002"), out / "checkpoint-00000002")
    with open(os.path.join(reference_run["out"], "metrics.jsonl"), encoding="utf-8") as fh:
        (out / "metrics.jsonl").write_text("".join(fh.readlines()[:3]))  # steps 1..3 logged
    return out


def _same_weights(a, b):
    ma, mb = HymbaForCausalLM.from_pretrained(a), HymbaForCausalLM.from_pretrained(b)
    return all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values()))


def test_run_writes_released_format_metrics_and_checkpoints(reference_run):
    out = reference_run["out"]
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    model = HymbaForCausalLM.from_pretrained(os.path.join(out, "final"))
    assert model.config.vocab_size == 2048 and model.config.hidden_size == 32
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "max_memory_gib"} <= set(records[0])
    assert 0.01 < records[0]["max_memory_gib"] < 100
    assert "val_loss" in records[1] and "val_loss" in records[3]
    assert records[-1]["lr"] == pytest.approx(1e-5)  # WSD ends at min_lr
    assert reference_run["val_loss"] == records[3]["val_loss"]


def test_resume_is_exact(reference_run, corpus, tmp_path):
    out = _interrupted_copy(reference_run, tmp_path)
    summary = train(small_args(corpus, out, resume=str(out)))
    assert summary["trained_steps"] == 2
    assert logged_losses(out) == logged_losses(reference_run["out"])  # steps 3, 4 bit-identical
    assert _same_weights(os.path.join(out, "final"), reference_run["final"])


def test_crash_during_save_keeps_previous_checkpoint(reference_run, corpus, tmp_path, monkeypatch):
    out = tmp_path / "crash"
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(src) == ".tmp-checkpoint-00000004":
            raise OSError("simulated crash before the rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        train(small_args(corpus, out))
    monkeypatch.setattr(os, "replace", real_replace)
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert os.path.isdir(out / ".tmp-checkpoint-00000004")
    train(small_args(corpus, out, resume=str(out)))
    assert not os.path.exists(out / ".tmp-checkpoint-00000004")
    assert logged_losses(out) == logged_losses(reference_run["out"])
    assert _same_weights(os.path.join(out, "final"), reference_run["final"])


def test_process_killed_during_save(reference_run, corpus, tmp_path):
    """SIGKILL in the middle of writing the step-4 checkpoint (after its weights, before the
    optimizer state): the step-2 checkpoint stays complete and the run resumes exactly."""
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from hymba.train import train
        from trainkit import small_args
        real_save = torch.save
        def save(obj, path, *a, **k):
            if ".tmp-checkpoint-00000004" in str(path):
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, path, *a, **k)
        torch.save = save
        torch.set_num_threads(1)
        train(small_args({str(corpus)!r}, {str(out)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert os.path.isfile(out / ".tmp-checkpoint-00000004" / "model.safetensors")
    train(small_args(corpus, out, resume=str(out)))
    assert logged_losses(out) == logged_losses(reference_run["out"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    real_forward = HymbaForCausalLM.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(HymbaForCausalLM, "forward", forward)
    out = tmp_path / "nan"
    with pytest.raises(TrainError, match=r"loss is nan at step 3.*checkpoint-00000002"):
        train(small_args(corpus, out))
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert not os.path.exists(out / "final")


def test_fine_tune_from_released_format(reference_run, corpus, tmp_path):
    summary = train(small_args(corpus, tmp_path / "ft", init_from=reference_run["final"], max_steps=2,
                               model={}))
    assert summary["steps"] == 2
    assert HymbaForCausalLM.from_pretrained(summary["final"]).config.hidden_size == 32


@pytest.mark.parametrize("change, error, message", [
    (dict(data=["/no/such/file.txt"]), DataError, "does not exist"),
    (dict(model={"vocab_size": 300}), TrainError, "tokenizer has 2048 tokens but the model's vocab_size is 300"),
    (dict(seq_len=128), TrainError, "above the model's max_position_embeddings 64"),
    (dict(max_steps=0), TrainError, "max_steps"),
])
def test_bad_settings(corpus, tmp_path, change, error, message):
    model = {**small_args(corpus, tmp_path).model, **change.pop("model", {})}
    with pytest.raises(error, match=message):
        train(small_args(corpus, tmp_path / "run", model=model, **change))
    assert not os.path.exists(tmp_path / "run")


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="empty"):
        train(small_args(tmp_path / "empty.txt", tmp_path / "run"))


def test_output_folder_checks(corpus, tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(TrainError, match="is a file"):
        train(small_args(corpus, tmp_path / "a_file" / "run"))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(TrainError, match="already exists"):
        train(small_args(corpus, existing))
    assert os.listdir(existing) == ["keep.txt"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_non_writable_output(corpus, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(TrainError, match="not writable"):
        train(small_args(corpus, locked / "run"))


def test_gradient_checkpointing_gives_the_same_losses(reference_run, corpus, tmp_path):
    summary = train(small_args(corpus, tmp_path / "gc", gradient_checkpointing=True))
    assert summary["losses"] == pytest.approx(reference_run["losses"], rel=1e-6)


def test_training_from_token_shards_equals_training_from_files(reference_run, corpus, tmp_path):
    from hymba.cli import main

    assert main(["tokenize", "--data", str(corpus), "--out", str(tmp_path / "tok")]) == 0
    summary = train(small_args(tmp_path / "tok", tmp_path / "from-shards"))
    assert summary["losses"] == reference_run["losses"]
    assert summary["val_loss"] == reference_run["val_loss"]


def test_chat_fine_tuning_trains_on_replies_only(reference_run, tmp_path):
    from hymba import load_tokenizer
    from hymba.train.encoding import CHAT_TEMPLATE

    tok = load_tokenizer(reference_run["final"])
    tok.chat_template = CHAT_TEMPLATE
    tok.save(tmp_path / "tok")
    chats = tmp_path / "chats.jsonl"
    with open(chats, "w", encoding="utf-8") as fh:
        for i in range(30):
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"Question number {i}: who wrote the play?"},
                {"role": "assistant", "content": "Shakespeare." if i % 2 else "Milton."},
            ]}) + "\n")
    args = small_args(chats, tmp_path / "sft", init_from=reference_run["final"], model={},
                      tokenizer=str(tmp_path / "tok"), max_steps=3, seq_len=32)
    summary = train(args)
    assert all(math.isfinite(x) for x in summary["losses"]) and math.isfinite(summary["val_loss"])
    # the baseline counts reply tokens only: far fewer distinct tokens than the whole chats
    assert summary["unigram_entropy"] < 3.0
    assert load_tokenizer(summary["final"]).chat_template == CHAT_TEMPLATE


def test_bf16_autocast_is_close_to_float32(reference_run, corpus, tmp_path):
    summary = train(small_args(corpus, tmp_path / "bf16", dtype="bfloat16"))
    assert summary["losses"] == pytest.approx(reference_run["losses"], abs=0.05)
    assert HymbaForCausalLM.from_pretrained(summary["final"]).dtype == torch.float32


def test_tensorboard_logging(corpus, tmp_path):
    pytest.importorskip("tensorboard")
    train(small_args(corpus, tmp_path / "tb", max_steps=2, tensorboard=True))
    events = os.listdir(tmp_path / "tb" / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in events)


def test_compile_flag(reference_run, corpus, tmp_path, monkeypatch):
    """--compile goes through torch.compile (here with the quick 'eager' backend)."""
    real_compile, compiled = torch.compile, []

    def quick_compile(module, **kwargs):
        compiled.append(module)
        return real_compile(module, backend="eager")

    monkeypatch.setattr(torch, "compile", quick_compile)
    summary = train(small_args(corpus, tmp_path / "compiled", compile=True))
    assert len(compiled) == 1
    assert summary["losses"] == pytest.approx(reference_run["losses"], rel=1e-5)


def test_train_args_take_path_objects_and_name_bad_values(tmp_path):
    from pathlib import Path

    from hymba.train import TrainArgs

    args = TrainArgs(data=(Path("a.txt"), "b.txt"), tokenizer=Path("/tok"), out=tmp_path / "run", device=None)
    assert args.data == ["a.txt", "b.txt"] and args.tokenizer == "/tok" and args.out == str(tmp_path / "run")
    args.validate()
    for bad, message in ((dict(lr="fast"), "lr must be a positive number"), (dict(max_steps=True), "max_steps"),
                         (dict(decay_fraction=2.0), "decay_fraction"), (dict(grad_clip=math.nan), "grad_clip"),
                         (dict(model=[1]), "model must be a mapping")):
        with pytest.raises(TrainError, match=message):
            TrainArgs(**bad).validate()


def test_train_model_in_memory_matches_a_run(reference_run, corpus, tmp_path, monkeypatch):
    """train_model on the rows a run reads, from the same initial weights, takes the same steps
    (the ablation trains through it) and writes nothing."""
    from hymba import HymbaConfig
    from hymba.tokenizer import load_tokenizer
    from hymba.train import train_model
    from hymba.train.data import BatchStream, load_rows, split_labels

    args = small_args(corpus, tmp_path / "unused")
    config = HymbaConfig.load(reference_run["final"])
    data = load_rows(args.data, load_tokenizer(reference_run["final"]), args.seq_len, args.val_fraction)
    stream = BatchStream(data.train, args.batch_size, args.seed)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = HymbaForCausalLM(config).eval()
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    seen = []
    losses = train_model(model, (split_labels(stream.batch(k)) for k in range(4)), args,
                         progress=lambda n, loss: seen.append((n, loss)), report_every=3)
    assert losses == reference_run["losses"]
    assert seen == [(3, losses[2]), (4, losses[3])]
    assert not model.training and os.listdir(work) == []
    assert _same_weights_as(model, reference_run["final"])
    with pytest.raises(TrainError, match="batches ran out at step 1 of 4"):
        train_model(model, [split_labels(stream.batch(0))], args)


def _same_weights_as(model, folder):
    other = HymbaForCausalLM.from_pretrained(folder)
    return all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), other.state_dict().values()))

"""FSDP2 training, sharded (DCP) checkpoints and a two-"node" launch, on CPU processes over gloo.

One global batch of 6 rows (2 micro-batches per step, gradient clipping on) is trained by one
process, by 2 FSDP ranks (3 rows each) and, resumed, by 3 ranks (2 rows each): the rows, their
order and the averaged gradients are the same, only the order of the float additions differs, so
the losses agree to a relative 1e-5 (seen: 1e-7; they are not bit-identical across rank counts).
Resumed on as many ranks as it was saved on, a run continues bit-identically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from trainkit import small_args

from hymba.checkpoint import CheckpointError
from hymba.cli import main
from hymba.train import TrainArgs, TrainError, train
from hymba.train import checkpointing as ckpt
from hymba.train.distributed import choose_parallel

HERE = os.path.dirname(os.path.abspath(__file__))
needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
LINES = [  # the corpus of conftest.py's fixture, written once for the module's runs
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "All the world's a stage, and all the men and women merely players.",
    "The quality of mercy is not strained; it droppeth as the gentle rain from heaven.",
    "Of Man's first disobedience, and the fruit of that forbidden tree.",
]
RUN = dict(batch_size=6, grad_accum=2, max_steps=4, save_every=2, eval_every=2)
TOL = dict(rel=1e-5, abs=1e-6)

# A rank of a torchrun launch whose rank 1 is killed (SIGKILL) once it has written its shards of
# its KILL_AT-th checkpoint: train(small_args(corpus, out, **RUN, **argv[3])).
KILLED_WORKER = """
import json, os, signal, sys
from trainkit import small_args
from hymba.train import train

if os.environ["RANK"] == "1":
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    write, saves = FileSystemWriter.write_data, [0]
    def write_then_die(self, *args, **kwargs):
        result = write(self, *args, **kwargs)
        result.wait()
        saves[0] += 1
        if saves[0] == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    FileSystemWriter.write_data = write_then_die
train(small_args(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3])))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def _torchrun(nproc: int, *hymba_train: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node NPROC -m hymba train ARGS...`` (torchrun is
    ``python -m torch.distributed.run``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
         "-m", "hymba", "train", *map(str, hymba_train)],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _config_file(path, corpus, out, **kw):
    """A ``--config`` file with the settings of ``small_args`` (the tiny model, tiny data)."""
    settings = dataclasses.asdict(small_args(corpus, out, **RUN, **kw))
    path.write_text(json.dumps(settings))
    return path


def _logged(run_dir, key: str) -> list[float]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line)[key] for line in fh]


def _logged_losses(run_dir) -> list[float]:
    return _logged(run_dir, "loss")


def _resume_copy(run_dir, step: int, dest):
    """A run folder holding ``run_dir``'s checkpoint of ``step`` and its metrics."""
    os.makedirs(dest)
    name = ckpt.checkpoint_name(step)
    shutil.copytree(os.path.join(run_dir, name), os.path.join(dest, name))
    shutil.copy(os.path.join(run_dir, "metrics.jsonl"), dest)
    return dest


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process and 2 FSDP ranks (gradient checkpointing on) train the same 4 steps."""
    tmp = tmp_path_factory.mktemp("fsdp")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{LINES[i % 4]} ({i})"}) + "\n" for i in range(40)))
    single = train(small_args(corpus, tmp / "one", **RUN))
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs gloo")
    config = _config_file(tmp / "run.json", corpus, tmp / "fsdp")
    proc = _torchrun(2, "--config", config, "--parallel", "fsdp", "--gradient-checkpointing")
    return {"tmp": tmp, "corpus": corpus, "single": single, "fsdp": tmp / "fsdp", "stdout": proc.stdout}


@needs_gloo
def test_fsdp_matches_one_process(runs):
    assert "parallel: FSDP2 (sharded) over 2 processes (--parallel fsdp)" in runs["stdout"]
    assert runs["stdout"].count(f"trained {runs['single']['parameters']:,} parameters for 4 steps") == 1
    assert _logged_losses(runs["fsdp"]) == pytest.approx(runs["single"]["losses"], **TOL)
    norms = [_logged(runs["fsdp"], "grad_norm"), _logged(runs["tmp"] / "one", "grad_norm")]
    assert norms[0] == pytest.approx(norms[1], **TOL) and min(norms[0]) > 1.0  # clipping at 1.0 acts
    # numbered checkpoints are sharded, final/ is the released format, gathered on rank 0
    for step in (2, 4):
        assert ckpt.is_sharded(runs["fsdp"] / ckpt.checkpoint_name(step))
    assert not os.path.exists(runs["fsdp"] / ckpt.checkpoint_name(2) / "model.safetensors")
    fsdp = load_file(runs["fsdp"] / "final" / "model.safetensors")
    one = load_file(runs["tmp"] / "one" / "final" / "model.safetensors")
    assert fsdp.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(fsdp[name], one[name], rtol=1e-4, atol=1e-5)


@needs_gloo
def test_sharded_checkpoint_resumes_on_one_process(runs):
    run = _resume_copy(runs["fsdp"], 2, runs["tmp"] / "resume1")
    summary = train(small_args(runs["corpus"], run, **RUN, parallel="fsdp", resume=str(run)))
    assert summary["parallel"] == "none" and summary["trained_steps"] == 2
    assert summary["losses"] == pytest.approx(_logged_losses(runs["fsdp"])[2:], **TOL)
    assert _logged_losses(run) == pytest.approx(_logged_losses(runs["fsdp"]), **TOL)


@needs_gloo
def test_a_sharded_resume_on_as_many_ranks_is_bit_identical(runs):
    run = _resume_copy(runs["fsdp"], 2, runs["tmp"] / "resume2")
    _torchrun(2, "--resume", run)
    assert _logged_losses(run) == _logged_losses(runs["fsdp"])
    final, resumed = (load_file(r / "final" / "model.safetensors") for r in (runs["fsdp"], run))
    assert all(torch.equal(final[name], resumed[name]) for name in final)


@needs_gloo
def test_kill_of_one_rank_during_a_save_keeps_the_last_checkpoint_and_three_ranks_resume(runs):
    """Rank 1 is killed (-9) after writing its shards of step 4: the launch fails, step 2 stays
    the newest checkpoint, and 3 ranks resume it, continuing the 2-rank loss curve."""
    out = runs["tmp"] / "killed"
    script = runs["tmp"] / "killed_worker.py"
    script.write_text(textwrap.dedent(KILLED_WORKER))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
         str(runs["corpus"]), str(out), json.dumps({**RUN, "parallel": "fsdp"})],
        env={**_env(), "KILL_AT": "2"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Signal 9 (SIGKILL) received" in proc.stderr
    assert [step for step, _ in ckpt.list_checkpoints(out)] == [2]
    unfinished = out / f".tmp-{ckpt.checkpoint_name(4)}" / ckpt.SHARDED_DIR  # both ranks' shards,
    assert sorted(os.listdir(unfinished)) == ["__0_0.distcp", "__1_0.distcp"]  # no index
    ckpt.check_training_state(ckpt.resolve_resume(str(out)))

    proc = _torchrun(3, "--resume", out)
    assert "resuming from step 2" in proc.stdout and "FSDP2 (sharded) over 3 processes" in proc.stdout
    assert _logged_losses(out) == pytest.approx(_logged_losses(runs["fsdp"]), **TOL)
    assert [step for step, _ in ckpt.list_checkpoints(out)] == [2, 4]
    assert not any(name.startswith(".tmp-") for name in os.listdir(out))


@needs_gloo
def test_a_ddp_checkpoint_resumes_under_fsdp_with_cpu_offload(runs):
    """A one-process (released-format) checkpoint's optimizer state is cut into FSDP shards."""
    run = _resume_copy(runs["tmp"] / "one", 2, runs["tmp"] / "offload")
    proc = _torchrun(2, "--resume", run, "--parallel", "fsdp", "--cpu-offload")
    assert "parameters and optimizer state offloaded to the CPU" in proc.stdout
    assert _logged_losses(run) == pytest.approx(runs["single"]["losses"], **TOL)
    assert ckpt.is_sharded(run / ckpt.checkpoint_name(4))


@needs_gloo
def test_a_sharded_checkpoint_resumes_under_ddp(runs):
    run = _resume_copy(runs["fsdp"], 2, runs["tmp"] / "to-ddp")
    proc = _torchrun(2, "--resume", run, "--parallel", "ddp")
    assert "parallel: DDP (replicated) over 2 processes (--parallel ddp)" in proc.stdout
    assert _logged_losses(run) == pytest.approx(_logged_losses(runs["fsdp"]), **TOL)
    assert os.path.isfile(run / ckpt.checkpoint_name(4) / "model.safetensors")  # DDP's format again


@needs_gloo
def test_export_writes_the_released_format(runs, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", "--from", str(runs["fsdp"]), "--out", str(out)]) == 0
    assert ckpt.checkpoint_name(4) in capsys.readouterr().out
    exported = load_file(out / "model.safetensors")
    final = load_file(runs["fsdp"] / "final" / "model.safetensors")
    assert exported.keys() == final.keys()
    for name in final:
        torch.testing.assert_close(exported[name], final[name], rtol=0, atol=0)
    assert os.path.isfile(out / "tokenizer.json") and os.path.isfile(out / "config.json")
    assert main(["export", "--from", str(tmp_path / "missing"), "--out", str(out)]) == 2


@needs_gloo
def test_a_sharded_checkpoint_starts_a_fine_tune(runs, tmp_path):
    """init_from a sharded checkpoint trains as from its released export (the final model)."""
    from hymba import HymbaForCausalLM

    sharded = runs["fsdp"] / ckpt.checkpoint_name(4)
    tune = dict(RUN, max_steps=2, save_every=10, eval_every=10, model={})
    a = train(small_args(runs["corpus"], tmp_path / "a", **tune, init_from=str(sharded)))
    b = train(small_args(runs["corpus"], tmp_path / "b", **tune, init_from=str(runs["fsdp"] / "final")))
    assert a["losses"] == b["losses"]
    with pytest.raises(CheckpointError, match="sharded training checkpoint.*hymba export --from"):
        HymbaForCausalLM.from_pretrained(sharded)


@needs_gloo
def test_lora_on_a_sharded_base_merges_from_its_shards(runs, tmp_path):
    """A LoRA fine-tune of a sharded checkpoint merges into it directly (no export first), as into
    its released export."""
    sharded = runs["fsdp"] / ckpt.checkpoint_name(4)
    tune = dict(RUN, max_steps=2, save_every=10, eval_every=10, model={}, lora="r=4,alpha=8")
    summary = train(small_args(runs["corpus"], tmp_path / "lora", **tune, init_from=str(sharded)))
    adapter = summary["final"]
    assert main(["merge-lora", "--base", str(sharded), "--adapter", adapter, "--out", str(tmp_path / "a")]) == 0
    assert main(["merge-lora", "--base", str(runs["fsdp"] / "final"), "--adapter", adapter,
                 "--out", str(tmp_path / "b")]) == 0
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


@needs_gloo
def test_a_foreign_object_in_the_checkpoint_index_is_refused(runs, tmp_path):
    run = _resume_copy(runs["fsdp"], 2, tmp_path / "bad")
    index = run / ckpt.checkpoint_name(2) / ckpt.SHARDED_DIR / ".metadata"
    index.write_bytes(pickle.dumps(os.getcwd))  # would call a function on load
    with pytest.raises(CheckpointError, match="corrupt or not written by hymba train"):
        ckpt.check_training_state(str(run / ckpt.checkpoint_name(2)))
    with pytest.raises(TrainError, match="corrupt"):
        train(small_args(runs["corpus"], run, **RUN, resume=str(run)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_gloo
@pytest.mark.parametrize("parallel", ["auto", "fsdp"])
def test_two_nodes_on_loopback_match_one_process(runs, tmp_path, parallel):
    """Two torchrun agents ("nodes", one process each) meet at a c10d rendezvous on 127.0.0.1 and
    run `hymba train` with the loss of one process: DDP (auto's pick on the CPU) or FSDP."""
    config = _config_file(tmp_path / "small.json", runs["corpus"], tmp_path / "nodes")
    port = _free_port()
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
              "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "hymba-test",
              "-m", "hymba", "train", "--config", str(config), "--parallel", parallel]
    nodes = [subprocess.Popen(launch, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], [err[-3000:] for _, err in outputs]
    stdout = "".join(out for out, _ in outputs)
    picked = {"auto": "DDP (replicated) over 2 processes (auto: training on the CPU)",
              "fsdp": "FSDP2 (sharded) over 2 processes (--parallel fsdp)"}[parallel]
    assert f"parallel: {picked}" in stdout
    assert _logged_losses(tmp_path / "nodes") == pytest.approx(runs["single"]["losses"], **TOL)


def test_auto_picks_ddp_when_the_training_state_fits():
    gpu = torch.device("cuda", 0)
    assert choose_parallel("auto", 10**9, gpu, free_bytes=80 * 2**30)[0] == "ddp"  # 16 GB of 80
    parallel, why = choose_parallel("auto", 3 * 10**9, gpu, free_bytes=80 * 2**30)  # 48 GB of 80
    assert parallel == "fsdp" and "44.7 GiB" in why and "80.0 GiB free" in why
    assert choose_parallel("auto", 10**12, torch.device("cpu")) == ("ddp", "auto: training on the CPU")
    assert choose_parallel("fsdp", 10, torch.device("cpu")) == ("fsdp", "--parallel fsdp")


@pytest.mark.parametrize("settings, message", [
    (dict(parallel="zero"), "parallel must be 'auto', 'ddp' or 'fsdp'"),
    (dict(parallel="fsdp", cuda_graph=True), "cuda_graph cannot capture FSDP"),
    (dict(parallel="ddp", cpu_offload=True), "cpu_offload .* needs parallel 'fsdp'"),
    (dict(parallel="fsdp", cpu_offload="yes"), "cpu_offload must be true or false"),
])
def test_parallel_settings_are_checked(settings, message):
    with pytest.raises(TrainError, match=message):
        TrainArgs(**settings).validate()


def test_cli_flags_set_parallel_and_offload(capsys):
    assert main(["train", "--parallel", "ddp", "--cpu-offload", "--max-steps", "1", "--no-progress"]) == 2
    assert "cpu_offload offloads FSDP's shards" in capsys.readouterr().err

"""Two CPU processes on gloo (torchrun) give the loss of one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch.distributed as dist
from trainkit import small_args

from hymba.train import train

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_gloo_processes_match_one(corpus, tmp_path):
    single = train(small_args(corpus, tmp_path / "one", batch_size=4, max_steps=3, grad_accum=2))
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        from trainkit import small_args
        from hymba.train import train
        summary = train(small_args({str(corpus)!r}, {str(tmp_path / "two")!r}, batch_size=4,
                                   max_steps=3, grad_accum=2))
        import sys
        sys.stdout.write(f"world size {{summary['world_size']}}\\n")  # one write: ranks share the pipe
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script)], env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("world size 2") == 2
    with open(tmp_path / "two" / "metrics.jsonl", encoding="utf-8") as fh:
        losses = [json.loads(line)["loss"] for line in fh]
    assert losses == pytest.approx(single["losses"], rel=1e-5, abs=1e-6)
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_an_interrupt_of_one_rank_stops_every_rank_at_the_same_step(corpus, tmp_path):
    """Ctrl-C reaching only rank 1 (during its 3rd step): both ranks stop after step 3, and rank 0
    saves it (the stop flag is all-reduced at every step boundary)."""
    script = tmp_path / "run.py"
    out = tmp_path / "run"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        from trainkit import small_args
        from hymba import HymbaForCausalLM
        from hymba.train import TrainInterrupted, train
        rank = int(os.environ["RANK"])
        forward, calls = HymbaForCausalLM.forward, [0]
        def patched(self, *args, **kwargs):
            if self.training:
                calls[0] += 1
                if rank == 1 and calls[0] == 3:
                    os.kill(os.getpid(), signal.SIGINT)
            return forward(self, *args, **kwargs)
        HymbaForCausalLM.forward = patched
        try:
            train(small_args({str(corpus)!r}, {str(out)!r}, batch_size=4, max_steps=10, save_every=100,
                             eval_every=100))
        except TrainInterrupted as stop:
            sys.stdout.write(f"rank {{rank}} stopped at {{stop.step}}\\n")
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script)], env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(line for line in proc.stdout.splitlines() if line.startswith("rank")) == [
        "rank 0 stopped at 3", "rank 1 stopped at 3"]
    assert sorted(os.listdir(out)) == ["checkpoint-00000003", "metrics.jsonl"]

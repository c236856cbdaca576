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

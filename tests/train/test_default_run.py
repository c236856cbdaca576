"""The embedded default run, end to end: `hymba train` with no arguments (minutes on 2 cores).

Skipped unless HYMBA_RUN_SLOW=1; run it with
    HYMBA_RUN_SLOW=1 python -m pytest -q tests/train/test_default_run.py -s
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from hymba import HymbaForCausalLM, load_tokenizer


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HYMBA_RUN_SLOW") != "1",
                    reason="the default training run takes minutes; set HYMBA_RUN_SLOW=1 to run it")
def test_hymba_train_without_arguments(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hymba", "train"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1800)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "hymba-run"
    model = HymbaForCausalLM.from_pretrained(out / "final")
    assert len(load_tokenizer(out / "final")) <= model.config.vocab_size
    assert any(name.startswith("checkpoint-") for name in os.listdir(out))
    with open(out / "metrics.jsonl", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) >= 2 and val[-1] < val[0]
    baseline = float(re.search(r"unigram baseline ([\d.]+)", proc.stdout).group(1))
    assert val[-1] < baseline - 0.5, (val[-1], baseline)  # clearly below the unigram entropy
    assert "sample:" in proc.stdout and len(proc.stdout.split("sample:")[1].strip()) > 20
    print(f"\ndefault run: {wall:.0f} s wall, validation loss {val[-1]:.4f}, unigram {baseline:.4f}")
    assert wall < 600, f"the default run took {wall:.0f} s (target: under 10 minutes on 2 cores)"

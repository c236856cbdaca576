"""lm-evaluation-harness integration: `--model hymba` on three local tasks (no downloads) that
exercise loglikelihood, loglikelihood_rolling and generate_until, batched with padding."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

CHOICES = [
    {"question": "The sky is", "choices": [" blue", " a large green tree"], "label": 0},
    {"question": "Question: what colour is the sky? Answer:", "choices": [" blue", " red"], "label": 0},
    {"question": "Meta tokens are", "choices": [" prepended", " ignored by every layer"], "label": 1},
]
TEXTS = [{"text": "The quick brown fox jumps over the lazy dog. " * 12},
         {"text": "Hymba runs attention heads and state space heads in parallel."}]
PROMPTS = [{"prompt": "The quick brown", "answer": "fox"},
           {"prompt": "Question: what colour is the sky? Answer: it is always", "answer": "blue"}]

TASKS = {
    "hymba_local_choice": """
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
""",
    "hymba_local_rolling": """
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
""",
    "hymba_local_generate": """
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""",
}


def write_tasks(folder: Path) -> None:
    data = {"hymba_local_choice": CHOICES, "hymba_local_rolling": TEXTS, "hymba_local_generate": PROMPTS}
    for name, body in TASKS.items():
        jsonl = folder / f"{name}.jsonl"
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in data[name]))
        header = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                  f"    test: {jsonl}\ntest_split: test\n")
        (folder / f"{name}.yaml").write_text(header + body)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def test_registered_through_import_hook():
    """A fresh interpreter resolves `hymba` the way the `lm_eval` command does (the .pth hook),
    and lm-eval's own models stay available."""
    code = ("from lm_eval.api.registry import get_model; "
            "print(get_model('hymba').__module__, get_model('dummy').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["hymba.eval.lm_eval", "DummyLM"]


def test_three_request_types_batched(tiny_checkpoint, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from hymba.eval.lm_eval import HymbaLM

    write_tasks(tmp_path)
    manager = TaskManager(include_path=str(tmp_path))
    common = dict(tasks=list(TASKS), task_manager=manager, log_samples=True)
    batched = lm_eval.simple_evaluate(
        model="hymba", model_args=f"pretrained={tiny_checkpoint},dtype=float32,max_length=32",
        batch_size=4, device="cpu", **common)
    lm = HymbaLM(pretrained=str(tiny_checkpoint), dtype="float32", batch_size=1, max_length=32)
    single = lm_eval.simple_evaluate(model=lm, **common)
    for name in TASKS:
        assert name in batched["results"]
        for a, b in zip(batched["samples"][name], single["samples"][name]):
            ra, rb = a["resps"], b["resps"]
            if name == "hymba_local_generate":
                assert ra == rb and isinstance(ra[0][0], str)
            else:
                for x, y in zip(ra, rb):
                    lx = x[0][0] if isinstance(x[0], (list, tuple)) else x[0]
                    ly = y[0][0] if isinstance(y[0], (list, tuple)) else y[0]
                    assert math.isfinite(lx) and lx < 0
                    assert lx == pytest.approx(ly, rel=1e-4, abs=1e-4)
    # The first document is longer than max_length: it was scored in several windows.
    assert len(lm.tok_encode(TEXTS[0]["text"])) > 32
    assert batched["results"]["hymba_local_rolling"]["bits_per_byte,none"] > 0


def test_cli_runs(tiny_checkpoint, tmp_path):
    """The command as a user types it, without --device (lm_eval then passes cuda:0, which means
    the CPU on a machine without CUDA)."""
    write_tasks(tmp_path)
    exe = Path(sys.executable).with_name("lm_eval")
    if not exe.exists():
        pytest.skip("lm_eval console script not next to this interpreter")
    out = subprocess.run(
        [str(exe), "--model", "hymba", "--model_args", f"pretrained={tiny_checkpoint},dtype=float32",
         "--tasks", "hymba_local_choice", "--include_path", str(tmp_path), "--batch_size", "2",
         "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ}, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "hymba_local_choice" in out.stdout


def test_generation_matches_full_forward_greedy(tiny_checkpoint):
    import torch

    from hymba.eval.lm_eval import HymbaLM

    lm = HymbaLM(pretrained=str(tiny_checkpoint), dtype="float32", device="cpu", batch_size=2)
    prompts = [lm.tok_encode("The quick brown fox"), lm.tok_encode("Meta")]
    texts = lm._generate(prompts, {"max_gen_toks": 5, "until": [], "do_sample": False})
    for prompt, text in zip(prompts, texts):
        ids = torch.tensor([prompt])
        new = []
        for _ in range(5):
            token = int(lm.model(ids).logits[0, -1].argmax())
            if token == lm.eot_token_id:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
        assert text == lm.tok_decode(new)


def test_cuda_device_falls_back_to_cpu_without_cuda(tiny_checkpoint, monkeypatch, caplog):
    import torch

    from hymba.eval.lm_eval import HymbaLM
    from hymba.model import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda:0", "cuda", None, "auto"):
        lm = HymbaLM(pretrained=str(tiny_checkpoint), dtype="float32", device=device)
        assert lm.device == torch.device("cpu") and lm.model.device == torch.device("cpu")
    assert "CUDA is not available: running on the CPU" in caplog.text
    with pytest.raises(InputError, match="'tpu:7' is not a device"):
        HymbaLM(pretrained=str(tiny_checkpoint), device="tpu:7")

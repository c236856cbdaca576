"""Greedy generation reproduces NVIDIA's reference on the golden fixture (fp32, CPU).

Default (trained semantics): the reference's no-cache generation, which re-runs the full forward
at every step. ``swa_decode="reference"``: the reference's cached ``generate``. Step logits are
the logits each new token was chosen from (step 0 = last prompt position).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hymba import HymbaForCausalLM

# Every reference fixture folder (as hymba-ref-tiny, see conftest.py) with generation outputs.
ROOT = Path(os.environ.get("HYMBA_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
FOLDERS = sorted(p.name for p in ROOT.glob("hymba-ref-*") if (p / "generation.json").is_file())


@pytest.fixture(scope="module", params=FOLDERS or ["hymba-ref-tiny"])
def reference(request, fixture_dir):
    folder = fixture_dir.parent / request.param
    model = HymbaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = json.loads((folder / "generation.json").read_text())["prompts"]
    return model, prompts, load_file(folder / "generation_logits.safetensors")


@pytest.mark.parametrize(
    "mode, ids_key, logits_key",
    [("trained", "nocache_greedy_ids", "nocache_step_logits"), ("reference", "generated_ids", "step_logits")],
)
def test_greedy_generation_matches_reference(reference, mode, ids_key, logits_key):
    model, prompts, logits = reference
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([prompt["prompt_ids"]])
        out = model.generate(ids, max_new_tokens=40, eos_token_id=[], swa_decode=mode, output_logits=True)
        assert out.sequences[0, : ids.shape[1]].tolist() == prompt["prompt_ids"]
        assert out.sequences[0, ids.shape[1] :].tolist() == prompt[ids_key], f"prompt {i}"
        err = (out.logits[0] - logits[f"prompt{i}.{logits_key}"]).abs().max().item()
        assert err <= 1e-4, f"prompt {i}: step logits differ by {err:.2e}"


@pytest.mark.parametrize(
    "mode, ids_key, logits_key",
    [("trained", "nocache_greedy_ids", "nocache_step_logits"), ("reference", "generated_ids", "step_logits")],
)
def test_batched_fixture_prompts_match_reference(reference, mode, ids_key, logits_key):
    """The prompts (tiny: lengths 5, 17, 45; window 16) left-padded into one batch."""
    model, prompts, logits = reference
    width = max(len(p["prompt_ids"]) for p in prompts)
    ids = torch.full((len(prompts), width), 7)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        n = len(p["prompt_ids"])
        ids[row, width - n :] = torch.tensor(p["prompt_ids"])
        mask[row, width - n :] = 1
    steps = 20  # tiny: prompt 0 (length 5) passes the window of 16 at step 12
    out = model.generate(ids, mask, max_new_tokens=steps, eos_token_id=[], swa_decode=mode, output_logits=True)
    for row, p in enumerate(prompts):
        assert out.sequences[row, width:].tolist() == p[ids_key][:steps]
        err = (out.logits[row] - logits[f"prompt{row}.{logits_key}"][:steps]).abs().max().item()
        assert err <= 1e-4

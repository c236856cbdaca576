"""CUDA-graph decode (generate(cuda_graph=...)): identical tokens to the eager path."""

from __future__ import annotations

import json

import pytest
import torch
from test_cache import make_model
from test_generation import left_pad

from hymba import HymbaForCausalLM, InputError
from hymba.inference import DecodeGraph, HybridCache

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_graph_needs_cuda_and_static_shapes():
    model = make_model()
    with pytest.raises(InputError, match="CUDA device"):
        model.generate(torch.tensor([[3, 4]]), cuda_graph=True)
    with pytest.raises(ValueError, match="static_shapes"):
        DecodeGraph(model, HybridCache(model.config, 1, 8))


@pytest.mark.gpu
@requires_cuda
def test_graph_decode_matches_eager_on_fixture(fixture_dir):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = HymbaForCausalLM.from_pretrained(fixture_dir, dtype=torch.float32, device="cuda").eval()
    prompts = json.loads((fixture_dir / "generation.json").read_text())["prompts"]
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([prompt["prompt_ids"]], device="cuda")
        eager = model.generate(ids, max_new_tokens=40, eos_token_id=[], cuda_graph=False)
        graph = model.generate(ids, max_new_tokens=40, eos_token_id=[], cuda_graph=True)
        again = model.generate(ids, max_new_tokens=40, eos_token_id=[])  # reuses the captured step
        new = graph[0, ids.shape[1] :].tolist()
        assert new == eager[0, ids.shape[1] :].tolist() == prompt["nocache_greedy_ids"], f"prompt {i}"
        assert torch.equal(again, graph)
        from hymba.inference.generation import _GRAPHS

        kept = _GRAPHS[model][1]
        shorter = model.generate(ids, max_new_tokens=25, eos_token_id=[])  # fits the kept cache: reused
        assert _GRAPHS[model][1] is kept and torch.equal(shorter, graph[:, : ids.shape[1] + 25])


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_decode_matches_eager_left_padded(dtype):
    model = make_model("tiny", scale=0.05).to("cuda", dtype)  # window 64, 16 meta tokens
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 2048, (n,), generator=g).tolist() for n in (5, 64, 100, 1)]
    ids, mask = left_pad(prompts, pad=1234)
    ids, mask = ids.cuda(), mask.cuda()
    options = dict(max_new_tokens=80, eos_token_id=[], output_logits=True)  # past the window
    eager = model.generate(ids, mask, cuda_graph=False, **options)
    graph = model.generate(ids, mask, cuda_graph=True, **options)
    assert torch.equal(graph.sequences, eager.sequences)
    torch.testing.assert_close(graph.logits, eager.logits, rtol=0, atol=1e-3 if dtype == torch.float32 else 0.1)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_decode_steps_do_not_synchronise(cuda_graph):
    """After the prefill, no decode step waits for the device (torch's sync debug mode raises on
    any synchronising call), eager or replayed."""
    from hymba.inference import DecodeLoop, GenerationOptions

    model = make_model("tiny", scale=0.05).to("cuda")
    ids = torch.randint(3, 2048, (3, 20), device="cuda")
    loop = DecodeLoop(model, ids, options=GenerationOptions(max_new_tokens=12, eos_token_id=[2],
                                                            cuda_graph=cuda_graph))
    steps = iter(loop)
    next(steps)
    next(steps)  # the first replay captures the graph
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rest = sum(1 for _ in steps)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert 1 <= rest <= 10

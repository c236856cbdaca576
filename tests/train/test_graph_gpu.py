"""TrainingGraph (CUDA only): replayed micro-steps give the eager steps' losses and gradients,
write or accumulate them like them, and follow the parameters after an optimizer step; `train(cuda_graph=True)`
matches the eager run."""

from __future__ import annotations

import copy

import pytest
import torch
from trainkit import SMALL_MODEL, small_args

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.train import TrainError, train
from hymba.train.graph import TrainingGraph

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Long enough for the fast paths (FlexAttention from 128 positions, the Triton scan), past the window.
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, global_attn_idx=[0], kv_reuse_group=[[1, 2]], num_memory_tokens=8,
             sliding_window=32, max_position_embeddings=512, orig_max_position_embeddings=512,
             vocab_size=300)


def _pair(dtype: torch.dtype | None):
    torch.manual_seed(0)
    eager = HymbaForCausalLM(HymbaConfig(**SHAPE)).cuda().train()
    graphed = copy.deepcopy(eager)
    return eager, graphed, TrainingGraph(graphed, dtype, loss_scale=0.5)


def _eager_step(model, ids, dtype):
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = model(ids, labels=ids).loss
    (loss * 0.5).backward()
    return loss.detach()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_replays_match_eager_steps(dtype):
    torch.backends.cuda.matmul.allow_tf32 = False
    eager, graphed, graph = _pair(dtype)
    tol = 1e-5 if dtype is None else 2e-2
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.1)
    opt_g = torch.optim.SGD(graphed.parameters(), lr=0.1)
    for update in range(2):
        # micro-step 0 writes the gradients (captured at update 0, then replayed over the last
        # update's gradients); 1 and 2 add to them (captured at 1, replayed at 2)
        for micro in range(3):
            ids = torch.randint(0, SHAPE["vocab_size"], (2, 200), device="cuda")
            expected = _eager_step(eager, ids, dtype)
            loss = graph(ids, ids, accumulate=micro > 0)
            assert abs(loss.item() - expected.item()) <= tol * abs(expected.item()), (update, micro)
        for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
            assert q.grad is not None, name
            assert _rel(q.grad, p.grad) <= 10 * tol, (update, name)
        opt_e.step()
        opt_g.step()
        opt_e.zero_grad(set_to_none=True)
        opt_g.zero_grad(set_to_none=True)  # the graph's next first micro-step puts its gradients back


@pytest.mark.gpu
@requires_cuda
def test_accumulating_needs_the_graphs_own_gradients():
    """Accumulating is refused before a first micro-step and after the gradients were replaced; a
    first micro-step puts the graph's gradients back."""
    _, graphed, graph = _pair(None)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 150), device="cuda")
    with pytest.raises(ValueError, match="only later calls may accumulate"):
        graph(ids, ids, accumulate=True)
    graph(ids, ids)
    graphed.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="replaced"):
        graph(ids, ids, accumulate=True)
    graph(ids, ids)  # a first micro-step puts them back
    graph(ids, ids, accumulate=True)
    assert all(p.grad is not None for p in graphed.parameters())


@pytest.mark.gpu
@requires_cuda
def test_wrong_batch_shape_and_ids_are_refused():
    _, _, graph = _pair(None)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 150), device="cuda")
    graph(ids, ids)
    with pytest.raises(ValueError, match="shape"):
        graph(ids[:, :100], ids[:, :100])
    bad = ids.cpu().clone()
    bad[0, 3] = SHAPE["vocab_size"]
    with pytest.raises(ValueError, match="token ids"):
        graph(bad, bad)


@pytest.mark.gpu
@requires_cuda
def test_train_with_cuda_graph_matches_eager(corpus, tmp_path):
    common = dict(device="cuda", dtype="float32", grad_accum=2, model=dict(SMALL_MODEL))
    eager = train(small_args(corpus, tmp_path / "eager", **common))
    graphed = train(small_args(corpus, tmp_path / "graph", cuda_graph=True, **common))
    assert graphed["losses"] == pytest.approx(eager["losses"], rel=1e-4)


def test_cuda_graph_needs_a_cuda_device(corpus, tmp_path):
    with pytest.raises(TrainError, match="cuda_graph"):
        train(small_args(corpus, tmp_path / "cpu", device="cpu", cuda_graph=True))
    with pytest.raises(TrainError, match="cuda_graph or compile"):
        train(small_args(corpus, tmp_path / "both", cuda_graph=True, compile=True))

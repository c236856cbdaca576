"""The whole model on CUDA (fast paths: Triton scan, FlexAttention) against the reference fixture
and against its own portable paths."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from hymba import HymbaForCausalLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def model(fixture_dir):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return HymbaForCausalLM.from_pretrained(fixture_dir, dtype=torch.float32, device="cuda").eval()


def test_logits_match_reference_fixture(model, fixture_dir):
    inputs = load_file(fixture_dir / "inputs.safetensors")
    expected = load_file(fixture_dir / "expected.safetensors")
    with torch.no_grad():
        for name, ids in inputs.items():
            logits = model(ids.cuda()).logits.cpu()
            err = (logits - expected[name]).abs().max().item()
            assert err <= 1e-4, f"{name}: max abs error {err:.2e}"


def test_greedy_generation_matches_reference_fixture(model, fixture_dir):
    prompts = json.loads((fixture_dir / "generation.json").read_text())["prompts"]
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([prompt["prompt_ids"]], device="cuda")
        out = model.generate(ids, max_new_tokens=40, eos_token_id=[])
        assert out[0, ids.shape[1] :].tolist() == prompt["nocache_greedy_ids"], f"prompt {i}"


_PORTABLE = {"HYMBA_ATTN_IMPL": "sdpa", "HYMBA_SCAN_IMPL": "reference", "HYMBA_TRITON": "0"}


def _logits_and_grads(model, ids, monkeypatch, env: dict, autocast: bool = False):
    for key in _PORTABLE:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = model(ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach().float(), grads


def test_long_input_fast_paths_match_portable_paths(model, monkeypatch):
    """Length > 128 runs FlexAttention, the Triton scan and the Triton norms, SwiGLU and rotary
    with their backward kernels; compare with SDPA + chunked scan + the PyTorch references,
    logits and parameter gradients."""
    ids = torch.randint(0, model.config.vocab_size, (2, 300), device="cuda")
    fast, g_fast = _logits_and_grads(model, ids, monkeypatch, {})
    slow, g_slow = _logits_and_grads(model, ids, monkeypatch, _PORTABLE)
    assert (fast - slow).abs().max().item() <= 1e-4
    assert g_fast.keys() == g_slow.keys()
    for name in g_slow:
        err = ((g_fast[name] - g_slow[name]).norm() / g_slow[name].norm().clamp_min(1e-12)).item()
        assert err < 1e-3, f"{name}: relative gradient error {err:.2e}"


def test_fast_paths_under_autocast_are_as_close_to_float32_as_the_portable_paths(model, monkeypatch):
    """bf16 autocast (training's setting): the fast paths' gradients are at least about as close
    to the float32 step's as the portable paths' are."""
    ids = torch.randint(0, model.config.vocab_size, (2, 300), device="cuda")
    _, exact = _logits_and_grads(model, ids, monkeypatch, _PORTABLE)
    _, slow = _logits_and_grads(model, ids, monkeypatch, _PORTABLE, autocast=True)
    _, fast = _logits_and_grads(model, ids, monkeypatch, {}, autocast=True)

    def error(grads: dict) -> float:
        return (sum((grads[n] - exact[n]).norm() ** 2 for n in exact) / sum(g.norm() ** 2 for g in exact.values())).sqrt().item()

    assert error(fast) <= 1.25 * error(slow), f"fast {error(fast):.4f} vs portable {error(slow):.4f}"


def test_long_prompt_into_a_fresh_cache_runs_flex_and_matches(model, monkeypatch):
    """A generation prefill of > 128 tokens attends with FlexAttention over meta + prompt; its
    logits equal the forward without a cache, and its cache equals the SDPA path's."""
    from hymba.inference import HybridCache, meta_prefix
    from hymba.ops import flex

    ids = torch.randint(0, model.config.vocab_size, (2, 300), device="cuda")
    calls = []
    real = flex.flex_attention_swa
    monkeypatch.setattr(flex, "flex_attention_swa", lambda *a, **kw: calls.append(1) or real(*a, **kw))

    def prefill():
        cache = HybridCache(model.config, 2, 310, device="cuda").reset(meta_prefix(model))
        with torch.no_grad():
            return model(ids, state=cache).logits, cache

    fast, fast_cache = prefill()
    assert calls, "the prefill did not run FlexAttention"
    monkeypatch.setenv("HYMBA_ATTN_IMPL", "sdpa")
    slow, slow_cache = prefill()
    with torch.no_grad():
        full = model(ids).logits.float()
    assert (fast - slow).abs().max().item() <= 1e-4
    assert (fast - full).abs().max().item() <= 1e-4
    for slot in fast_cache.k:
        torch.testing.assert_close(fast_cache.k[slot], slow_cache.k[slot], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast_cache.v[slot], slow_cache.v[slot], rtol=1e-5, atol=1e-5)
    for slot in fast_cache.ring_pos:
        assert fast_cache.ring_pos[slot].equal(slow_cache.ring_pos[slot])
    nxt = ids[:, :1]
    with torch.no_grad():  # decoding goes on from either cache alike
        a, b = (model(nxt, state=c).logits for c in (fast_cache, slow_cache))
    assert (a - b).abs().max().item() <= 1e-4


def _decode_logits(m, ids: torch.Tensor, triton: str, monkeypatch) -> torch.Tensor:
    """Logits of a 40-token prefill and then one decode step per remaining token, (batch, steps,
    vocab) in float32, with HYMBA_TRITON set to ``triton``."""
    from hymba.inference import HybridCache, meta_prefix

    monkeypatch.setenv("HYMBA_TRITON", triton)
    dtype = m.lm_head.weight.dtype
    cache = HybridCache(m.config, ids.shape[0], ids.shape[1] + 10, dtype=dtype, device="cuda").reset(meta_prefix(m))
    with torch.no_grad():
        steps = [m.model(ids[:, :40], state=cache)[0][:, -1]]
        steps += [m.model(ids[:, t : t + 1], state=cache)[0][:, -1] for t in range(40, ids.shape[1])]
        return m.lm_head(torch.stack(steps, 1)).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_decode_matches_reference_decode(fixture_dir, monkeypatch, dtype):
    """Prefill + 150 decode steps (well past window + meta tokens) with the fused Triton kernels
    (RMSNorm, rotary, conv/SSM step, decode attention, linear layers) against HYMBA_TRITON=0 on the same
    tokens. In float32 every step's logits agree; in bfloat16 both paths round in different
    places, so each is compared with a float32 run of the same (bf16) weights, and the fused path
    must be about as accurate as the reference path."""
    m = HymbaForCausalLM.from_pretrained(fixture_dir, dtype=dtype, device="cuda").eval()
    ids = torch.randint(0, m.config.vocab_size, (3, 190), device="cuda")
    fused, reference = (_decode_logits(m, ids, switch, monkeypatch) for switch in ("1", "0"))
    if dtype == torch.float32:
        err = (fused - reference).abs()
        step_err = err.amax(dim=(0, 2))
        assert err.max().item() <= 1e-4, (f"max error {err.max().item():.3g}; first bad step "
                                          f"{int((step_err > 1e-4).nonzero()[0])}, per-step max {step_err.tolist()[:60]}")
        return
    exact = _decode_logits(copy.deepcopy(m).float(), ids, "0", monkeypatch)
    rel_fused, rel_reference = ((run - exact).norm().item() / exact.norm().item() for run in (fused, reference))
    assert rel_reference < 0.1, f"the bf16 reference decode is off by {rel_reference:.3g}"
    assert rel_fused <= 1.5 * rel_reference + 1e-3, (
        f"relative error against float32: fused {rel_fused:.3g}, reference {rel_reference:.3g}")

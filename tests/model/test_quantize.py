"""Weight-only quantization (hymba.quantize, from_pretrained(quantize=...)) on the reference fixture.

Tolerances. The fixture is a tiny random model (hidden size 64, 8 layers, fp32). Per-output-channel
int8 rounds every weight to within half a step, 1/254 of its row's largest weight; through 8
layers of random weights the logits moved by at most 6.7% of their largest magnitude when measured
(0.64 of 9.5). The tests allow 10%, and greedy tokens must agree until the unquantized model's
top-2 margin is within twice that error: a token may only flip at a near-tie. Int4 (16 levels per
group) is checked for running the same paths and for logits that still follow the unquantized
ones, not for closeness (its quality cost on a trained model: benchmarks/quant_quality.py).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn as nn

import hymba
from hymba import CheckpointError, ConfigError, HymbaForCausalLM
from hymba.inference import HybridCache, meta_prefix
from hymba.model.quantize import quantized_layers
from hymba.ops.linear.quantized import is_quantized

pytest.importorskip("torchao.quantization")

INT8_LOGIT_TOLERANCE = 0.10  # of the largest logit magnitude, see the module docstring


@pytest.fixture(scope="module")
def base(fixture_dir):
    return HymbaForCausalLM.from_pretrained(fixture_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request, fixture_dir):
    model = HymbaForCausalLM.from_pretrained(fixture_dir, dtype=torch.float32, quantize=request.param).eval()
    return request.param, model


@pytest.fixture(scope="module")
def prompts(fixture_dir):
    return [p["prompt_ids"] for p in json.loads((fixture_dir / "generation.json").read_text())["prompts"]]


def test_only_the_decoder_linear_weights_are_quantized(quantized, base):
    mode, model = quantized
    assert model.quantization == mode and base.quantization is None
    layers = dict(quantized_layers(model))
    names = {n.split(".", 3)[-1] for n in layers}
    assert names == {"mixer.in_proj", "mixer.out_proj", "mixer.ssm.x_proj", "mixer.ssm.dt_proj", "mlp.gate_proj",
                     "mlp.up_proj", "mlp.down_proj"}
    assert all(is_quantized(m.weight) for m in layers.values())
    int8 = {n for n, m in layers.items() if type(m.weight).__name__ == "Int8Tensor"}
    if mode == "int8":
        assert int8 == set(layers)
    else:  # the SSM projections take int8 (the fused SSM step reads it); the rest is int4
        assert int8 == {n for n in layers if n.endswith(("ssm.x_proj", "ssm.dt_proj"))}
    for name, p in model.named_parameters():
        if not any(name.startswith(n + ".") for n in layers):
            assert type(p) is nn.Parameter and p.dtype == torch.float32, name  # embeddings, head, norms, conv, SSM
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied


def test_int8_logits_stay_close(base, quantized, prompts):
    mode, model = quantized
    if mode != "int8":
        pytest.skip("int8 only")
    for ids in prompts:
        x = torch.tensor([ids])
        want, got = base(x).logits, model(x).logits
        assert (got - want).abs().max() <= INT8_LOGIT_TOLERANCE * want.abs().max()


def test_int8_greedy_tokens_match_until_a_near_tie(base, quantized, prompts):
    mode, model = quantized
    if mode != "int8":
        pytest.skip("int8 only")
    agreed = []
    for ids in prompts:
        x = torch.tensor([ids])
        want = base.generate(x, max_new_tokens=24, eos_token_id=[], output_logits=True)
        got = model.generate(x, max_new_tokens=24, eos_token_id=[])
        a, b = want.sequences[0, x.shape[1]:].tolist(), got[0, x.shape[1]:].tolist()
        first = next((i for i, (s, t) in enumerate(zip(a, b)) if s != t), len(a))
        agreed.append(first)
        if first < len(a):
            step = want.logits[0, first]
            top2 = step.topk(2).values
            margin = (top2[0] - top2[1]).item()
            assert margin <= 2 * INT8_LOGIT_TOLERANCE * step.abs().max().item(), (ids, first, margin)
    assert min(agreed) >= 4, agreed


def test_every_path_runs_and_agrees(quantized, prompts):
    """Prefill, a cached prefill and token-by-token decode, and a left-padded batch give one set of
    logits for the same quantized weights."""
    _, model = quantized
    ids = torch.tensor([prompts[1]])
    full = model(ids).logits[0]
    cache = HybridCache(model.config, 1, ids.shape[1] + 4).reset(meta_prefix(model))
    split = ids.shape[1] // 2
    with torch.no_grad():
        first = model(ids[:, :split], state=cache).logits[0]
        steps = [model(ids[:, i:i + 1], state=cache).logits[0, -1] for i in range(split, ids.shape[1])]
    torch.testing.assert_close(first, full[:split], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.stack(steps), full[split:], rtol=1e-4, atol=1e-4)
    short = prompts[0]
    batch = torch.full((2, ids.shape[1]), 3)
    batch[0] = ids[0]
    batch[1, -len(short):] = torch.tensor(short)
    mask = torch.zeros_like(batch)
    mask[0] = 1
    mask[1, -len(short):] = 1
    padded = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(padded[0], full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(padded[1, -len(short):], model(torch.tensor([short])).logits[0], rtol=1e-4, atol=1e-4)
    out = model.generate(batch, attention_mask=mask, max_new_tokens=6, eos_token_id=[])
    assert out.shape == (2, ids.shape[1] + 6)


def test_int4_logits_follow_the_unquantized_ones(base, quantized, prompts):
    """Int4 moves this random model's logits a lot (measured: cosine similarity of the centred
    logits 0.64 to 0.73 per position, int8: above 0.996); weights that were not quantized as
    they should be (wrong scales, zero points or layout) give no similarity at all."""
    mode, model = quantized
    if mode != "int4":
        pytest.skip("int4 only")
    for ids in prompts:
        x = torch.tensor([ids])
        a, b = base(x).logits[0], model(x).logits[0]
        cos = torch.nn.functional.cosine_similarity(a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True))
        assert cos.min() >= 0.5, cos


def test_quantize_a_built_model(base):
    model = HymbaForCausalLM(base.config).eval()
    model.load_state_dict(base.state_dict())
    assert hymba.quantize(model, "int8") is model and model.quantization == "int8"
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model(ids).logits, base(ids).logits, rtol=0, atol=0.1 * base(ids).logits.abs().max().item())
    with pytest.raises(ConfigError, match="already quantized"):
        hymba.quantize(model, "int4")
    with pytest.raises(CheckpointError, match="quantized model cannot be saved"):
        model.save_pretrained("/nonexistent/never-written")


@pytest.mark.parametrize("mode", ["int3", "INT8", "", 8, None])
def test_bad_quantize_values_give_one_clear_error(mode, base, tmp_path):
    with pytest.raises(ConfigError, match=r"quantize=.*choose one of 'int8', 'int4'"):
        hymba.quantize(HymbaForCausalLM(base.config), mode)
    if mode is not None:  # checked before anything is read: no CheckpointError for the missing folder
        with pytest.raises(ConfigError, match="choose one of"):
            HymbaForCausalLM.from_pretrained(tmp_path / "missing", quantize=mode)


def test_bad_group_size(base):
    with pytest.raises(ConfigError, match="group_size"):
        hymba.quantize(HymbaForCausalLM(base.config), "int4", group_size=100)


def test_missing_torchao_is_one_clear_error(base, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # import fails
    with pytest.raises(ConfigError, match=r"needs torchao: pip install 'hymba\[quant\]'"):
        hymba.quantize(HymbaForCausalLM(base.config), "int8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_cuda_graph_decode_with_quantized_weights(fixture_dir, prompts, mode):
    """bf16 on CUDA: the captured decode step (no host syncs in the quantized products) gives the
    eager step's tokens, and int8 decode runs the int8 kernels."""
    model = HymbaForCausalLM.from_pretrained(fixture_dir, dtype=torch.bfloat16, device="cuda", quantize=mode).eval()
    for ids in prompts:
        x = torch.tensor([ids], device="cuda")
        eager = model.generate(x, max_new_tokens=16, eos_token_id=[], cuda_graph=False)
        graph = model.generate(x, max_new_tokens=16, eos_token_id=[], cuda_graph=True)
        assert torch.equal(eager, graph)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_kernel_paths_match_the_reference_paths(fixture_dir, prompts, mode, triton_device, monkeypatch):
    """The quantized model with every Triton path on (the int8 matrix-vector, tensor-core and gated
    kernels, the fused SSM step reading int8 projections; on CPU under the interpreter) gives the
    tokens and, within float32 tolerance, the logits of its PyTorch paths (HYMBA_TRITON=0)."""
    import importlib

    model = HymbaForCausalLM.from_pretrained(fixture_dir, dtype=torch.float32, device=triton_device,
                                             quantize=mode).eval()
    ids = torch.tensor([prompts[1]], device=triton_device)
    kernels = importlib.import_module("hymba.ops.ssm_step.triton")
    fused = []
    real = kernels.fused_mamba_step_triton
    monkeypatch.setattr(kernels, "fused_mamba_step_triton",
                        lambda *a, **kw: fused.append(kw["x_proj_scale"] is not None) or real(*a, **kw))
    out = {}
    for switch in ("0", "force" if triton_device == "cpu" else "1"):
        monkeypatch.setenv("HYMBA_TRITON", switch)
        with torch.no_grad():
            out[switch] = model.generate(ids, max_new_tokens=5, eos_token_id=[], output_logits=True)
    fast = out["force" if triton_device == "cpu" else "1"]
    assert fused and all(fused)  # the decode steps ran the fused SSM step on int8 projections
    assert torch.equal(fast.sequences, out["0"].sequences)
    torch.testing.assert_close(fast.logits, out["0"].logits, rtol=1e-4, atol=1e-4)


def test_a_model_with_lora_adapters_is_not_quantized():
    """Adapters are merged first: quantizing them would round the fine-tune away silently."""
    pytest.importorskip("peft")
    pytest.importorskip("torchao")
    from peft import LoraConfig, inject_adapter_in_model

    from hymba import ConfigError, HymbaConfig, HymbaForCausalLM, quantize

    model = HymbaForCausalLM(HymbaConfig.from_preset("tiny"))
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["in_proj"]), model)
    with pytest.raises(ConfigError, match="merge-lora"):
        quantize(model, "int8")

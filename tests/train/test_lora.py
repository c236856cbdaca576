"""LoRA (hymba.train.lora): training with adapters, exact resume, gradients into the SSM path,
merging (the merged model gives the adapter model's logits on every path) and refused targets."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from hubkit import released_folder
from safetensors.torch import load_file
from trainkit import small_args

from hymba import HymbaForCausalLM
from hymba.cli import main
from hymba.config import ConfigError
from hymba.train import TrainArgs, TrainError, train
from hymba.train.checkpointing import list_checkpoints
from hymba.train.lora import (
    DEFAULT_TARGETS,
    SUPPORTED_TARGETS,
    LoraError,
    LoraSettings,
    add_lora,
    load_lora,
    merge_lora,
)

peft = pytest.importorskip("peft", reason="LoRA needs peft (pip install 'hymba[hf]')")

LORA = "r=4,alpha=8,dropout=0.1,targets=in_proj,out_proj,gate_proj,up_proj,down_proj,x_proj"


# ------------------------------------------------------------------------------------------------
# Settings


def test_settings_parse_text_and_mappings():
    s = LoraSettings.parse("r=16,alpha=32,dropout=0.05,targets=x_proj,in_proj")
    assert (s.r, s.alpha, s.dropout, s.targets) == (16, 32.0, 0.05, ("in_proj", "x_proj"))
    assert LoraSettings.parse("r=8").targets == DEFAULT_TARGETS
    assert LoraSettings.parse({"r": 8, "targets": ["x_proj", "in_proj"]}) == LoraSettings.parse(
        "r=8,targets=in_proj,x_proj")
    assert LoraSettings.parse(s.to_dict()) == s


@pytest.mark.parametrize("text, message", [
    ("r=4,targets=dt_proj", "'dt_proj' is not supported: its weight goes straight to the SSM kernels"),
    ("r=4,targets=in_proj,conv1d", "'conv1d' is not supported"),
    ("r=4,targets=lm_head", "'lm_head' is not supported: Hymba ties it to embed_tokens"),
    ("r=4,targets=q_proj", "unknown lora target 'q_proj'"),
    ("r=0", "r must be a positive integer"),
    ("r=four", "lora r must be a number"),
    ("r=4,alpha=-1", "alpha must be a positive number"),
    ("r=4,dropout=1.5", r"dropout must be a number in \[0, 1\)"),
    ("r=4,rank=3", "unknown lora setting"),
    ("16", "not KEY=VALUE"),
])
def test_bad_settings_are_refused_with_one_message(text, message):
    with pytest.raises(LoraError, match=message):
        LoraSettings.parse(text)
    with pytest.raises(TrainError, match=message):
        TrainArgs(lora=text, init_from="/somewhere").validate()


def test_lora_needs_a_base_model():
    with pytest.raises(TrainError, match="give init_from"):
        TrainArgs(lora="r=4").validate()


# ------------------------------------------------------------------------------------------------
# The model: gradients, refused targets, merged == adapter + base on every path


@pytest.fixture(scope="module")
def base_folder(fixture_dir, tmp_path_factory):
    """The reference fixture with the bundled tokenizer (a released-format folder)."""
    return released_folder(fixture_dir, tmp_path_factory.mktemp("lora-base"))


def _random_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-zero adapters (a new adapter's B is zero: it would change nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def adapted(base_folder, tmp_path_factory):
    """(model with random adapters on every supported target, its saved adapter, the merged
    model written by merge_lora, its folder, the PEFT model)."""
    model = HymbaForCausalLM.from_pretrained(base_folder)
    wrapped = add_lora(model, LoraSettings(r=4, alpha=8, targets=SUPPORTED_TARGETS), base=str(base_folder))
    _random_adapters(model)
    model.eval()
    adapter = tmp_path_factory.mktemp("adapter")
    wrapped.save_pretrained(adapter)
    merged_dir = merge_lora(None, str(adapter), str(tmp_path_factory.mktemp("merged") / "out"))
    return model, adapter, HymbaForCausalLM.from_pretrained(merged_dir).eval(), merged_dir, wrapped


def test_gradients_reach_the_adapters_of_the_ssm_path(base_folder):
    model = HymbaForCausalLM.from_pretrained(base_folder)
    add_lora(model, LoraSettings(r=4, alpha=8, targets=SUPPORTED_TARGETS))
    _random_adapters(model)
    ids = torch.randint(3, 500, (2, 12))
    model(ids, labels=ids).loss.backward()
    params = dict(model.named_parameters())
    assert all(not p.requires_grad for n, p in params.items() if "lora_" not in n)  # only adapters train
    d_inner = model.config.d_inner
    for i in range(len(model.layers)):
        prefix = f"model.layers.{i}.mixer."
        in_b = params[prefix + "in_proj.lora_B.default.weight"].grad
        # in_proj's last 2·d_inner output columns are the SSM's x and z
        assert in_b[-2 * d_inner : -d_inner].abs().sum() > 0 and in_b[-d_inner:].abs().sum() > 0
        assert params[prefix + "in_proj.lora_A.default.weight"].grad.abs().sum() > 0
        for part in ("lora_A", "lora_B"):
            assert params[prefix + f"ssm.x_proj.{part}.default.weight"].grad.abs().sum() > 0, (i, part)


@pytest.mark.parametrize("target, message", [
    ("dt_proj", "an adapter on the SSM's dt_proj .* is not supported"),
    ("conv1d", "an adapter on the SSM's conv1d .* is not supported"),
    ("lm_head", "an adapter on lm_head or embed_tokens is not supported"),
])
def test_adapters_the_kernels_would_skip_are_refused(base_folder, target, message, tmp_path):
    model = HymbaForCausalLM.from_pretrained(base_folder)
    rank = model.config.d_inner if target == "conv1d" else 2  # PEFT's depthwise-conv LoRA: rank % groups == 0
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=rank, target_modules=[target]))
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ConfigError, match=message):
        model(ids)
    with pytest.raises(ConfigError, match=message):
        model.generate(ids, max_new_tokens=2)
    wrapped.save_pretrained(tmp_path / "adapter")
    with pytest.raises(LoraError, match=f"lora target '{target}' is not supported"):
        merge_lora(str(base_folder), str(tmp_path / "adapter"), str(tmp_path / "merged"))
    assert not os.path.exists(tmp_path / "merged")


def test_merge_is_base_plus_scaled_product(adapted, base_folder):
    model, adapter, merged, merged_dir, _ = adapted
    base = HymbaForCausalLM.from_pretrained(base_folder)
    weights = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    prefix = "base_model.model.hymba.model.layers.1.mixer."
    for module in ("in_proj", "ssm.x_proj"):
        a, b = weights[f"{prefix}{module}.lora_A.weight"], weights[f"{prefix}{module}.lora_B.weight"]
        name = f"model.layers.1.mixer.{module}.weight"
        expected = base.state_dict()[name] + (8 / 4) * b @ a
        torch.testing.assert_close(merged.state_dict()[name], expected, rtol=0, atol=1e-6)
    # everything that carried no adapter is the base's, bit for bit
    for name, tensor in base.state_dict().items():
        if not any(t in name for t in SUPPORTED_TARGETS):
            assert torch.equal(merged.state_dict()[name], tensor), name
    assert sorted(os.listdir(merged_dir)) == ["config.json", "generation_config.json", "model.safetensors",
                                              "tokenizer.json", "tokenizer_config.json"]


def test_an_adapter_for_another_model_is_refused(adapted, base_folder, tmp_path):
    from safetensors.torch import save_file

    weights = load_file(os.path.join(adapted[1], "adapter_model.safetensors"))
    for name, change in (("fewer", lambda w: {k: v for k, v in w.items() if ".layers.1." not in k}),
                         ("more", lambda w: {**w, **{k.replace(".layers.0.", ".layers.99."): v.clone()
                                                     for k, v in w.items() if ".layers.0." in k}})):
        folder = tmp_path / name
        shutil.copytree(adapted[1], folder)
        save_file(change(weights), folder / "adapter_model.safetensors")
        what = "no weights for adapted modules" if name == "fewer" else "weights for modules this model lacks"
        with pytest.raises(LoraError, match=f"does not fit this model: it has {what}"):
            merge_lora(str(base_folder), str(folder), str(tmp_path / "merged"))
    small = tmp_path / "small"  # other widths: PEFT's own size check, reported the same way
    model = HymbaForCausalLM(HymbaForCausalLM.from_pretrained(base_folder).config.replace(hidden_size=32))
    add_lora(model, LoraSettings(r=4)).save_pretrained(small)
    with pytest.raises(LoraError, match="does not fit this model"):
        merge_lora(str(base_folder), str(small), str(tmp_path / "merged"))


def test_an_adapter_of_a_bare_model_merges(base_folder, tmp_path):
    """PEFT applied to HymbaForCausalLM itself (tensor names without the wrapper's ``hymba.``)."""
    model = HymbaForCausalLM.from_pretrained(base_folder)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["x_proj", "out_proj"]))
    _random_adapters(model)
    wrapped.save_pretrained(tmp_path / "adapter")
    merged = HymbaForCausalLM.from_pretrained(merge_lora(str(base_folder), str(tmp_path / "adapter"),
                                                         str(tmp_path / "merged")))
    ids = torch.randint(3, 500, (2, 10))
    with torch.no_grad():
        assert (merged(ids).logits - model.eval()(ids).logits).abs().max() < 1e-4


def test_merge_keeps_the_base_dtype(adapted, base_folder, tmp_path):
    """A bf16 base: the merge is computed in float32 and rounded once to bf16."""
    base = HymbaForCausalLM.from_pretrained(base_folder)
    base.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base_folder / name, tmp_path / "bf16" / name)
    out = merge_lora(str(tmp_path / "bf16"), str(adapted[1]), str(tmp_path / "merged"))
    merged = HymbaForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.bfloat16 and merged.config.torch_dtype == "bfloat16"
    weights = load_file(os.path.join(adapted[1], "adapter_model.safetensors"))
    prefix = "base_model.model.hymba.model.layers.0.mixer.out_proj."
    name = "model.layers.0.mixer.out_proj.weight"
    bf16_base = HymbaForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).state_dict()[name]
    expected = (bf16_base + 2.0 * weights[prefix + "lora_B.weight"] @ weights[prefix + "lora_A.weight"]).bfloat16()
    assert torch.equal(merged.state_dict()[name], expected)


def test_merged_model_gives_the_adapter_logits_on_prefill(adapted, base_folder):
    model, _, merged, _, _ = adapted
    ids = torch.randint(3, 500, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # a left-padded row
    with torch.no_grad():
        for args in ((ids,), (ids, mask)):
            got, want = merged(*args).logits, model(*args).logits
            assert (got - want).abs().max().item() < 1e-4
        base_logits = HymbaForCausalLM.from_pretrained(base_folder).eval()(ids).logits
        assert (base_logits - merged(ids).logits).abs().max() > 1e-2  # the adapters change the model


def test_merged_model_gives_the_adapter_tokens_on_cached_decode(adapted, base_folder):
    model, _, merged, _, _ = adapted
    base = HymbaForCausalLM.from_pretrained(base_folder).eval()
    ids = torch.randint(3, 500, (2, 9))
    options = dict(max_new_tokens=12, eos_token_id=[], output_logits=True)
    want, got = model.generate(ids, **options), merged.generate(ids, **options)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-4)
    plain = base.generate(ids, **options)
    assert (plain.logits - want.logits).abs().max() > 1e-2  # the adapters change the model


def test_switching_adapters_off_or_merging_them_in_place_renews_the_cached_meta_prefix(base_folder):
    """generate caches the meta tokens' state per model, renewed when the parameters change;
    switching adapters off (PEFT's disable_adapter) or merging them in place changes no parameter
    version, and must renew it too."""
    base = HymbaForCausalLM.from_pretrained(base_folder).eval()
    model = HymbaForCausalLM.from_pretrained(base_folder).eval()
    wrapped = add_lora(model, LoraSettings(r=4, alpha=8, targets=SUPPORTED_TARGETS))
    _random_adapters(model)
    ids = torch.randint(3, 500, (1, 6))
    options = dict(max_new_tokens=4, eos_token_id=[], output_logits=True)
    with_adapters = model.generate(ids, **options).logits
    with wrapped.disable_adapter():
        torch.testing.assert_close(model.generate(ids, **options).logits, base.generate(ids, **options).logits,
                                   rtol=0, atol=1e-5)
    torch.testing.assert_close(model.generate(ids, **options).logits, with_adapters, rtol=0, atol=1e-5)
    wrapped.merge_adapter()  # in place: the LoRA layers stay, their weights are added to the base
    torch.testing.assert_close(model.generate(ids, **options).logits, with_adapters, rtol=0, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_merged_model_gives_the_adapter_tokens_with_cuda_graphs(adapted, base_folder):
    """CUDA-graph decode: the adapter model runs the unfused projections, the merged one the
    fused kernels; same tokens, logits within float32 rounding."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model, _, merged, _, _ = adapted
    model, merged = model.to("cuda"), merged.to("cuda")
    try:
        ids = torch.randint(3, 500, (2, 9), generator=torch.Generator().manual_seed(3)).cuda()
        options = dict(max_new_tokens=16, eos_token_id=[], output_logits=True)
        eager = model.generate(ids, cuda_graph=False, **options)
        for m in (model, merged):
            graph = m.generate(ids, cuda_graph=True, **options)
            assert torch.equal(graph.sequences, eager.sequences)
            torch.testing.assert_close(graph.logits, eager.logits, rtol=0, atol=1e-3)
        # the captured step is not replayed once the adapters are switched off
        base = HymbaForCausalLM.from_pretrained(base_folder, device="cuda").eval()
        plain = base.generate(ids, cuda_graph=True, **options)
        with adapted[4].disable_adapter():
            off = model.generate(ids, cuda_graph=True, **options)
        torch.testing.assert_close(off.logits, plain.logits, rtol=0, atol=1e-3)
    finally:
        model.to("cpu"), merged.to("cpu")


# ------------------------------------------------------------------------------------------------
# hymba train --lora


@pytest.fixture(scope="module")
def trained_base(tmp_path_factory):
    """A small trained model (4 steps) and the corpus it was trained on."""
    from conftest import LINES

    root = tmp_path_factory.mktemp("lora-train")
    corpus = root / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as fh:
        for i in range(40):
            fh.write(json.dumps({"text": f"{LINES[i % 4]} ({i})"}) + "\n")
    summary = train(small_args(corpus, root / "base"))
    return summary, corpus


def lora_args(trained_base, out, **kw) -> TrainArgs:
    summary, corpus = trained_base
    return small_args(corpus, out, init_from=summary["final"], model={}, lora=LORA, lr=3e-2,
                      **{"max_steps": 6, **kw})


@pytest.fixture(scope="module")
def lora_run(trained_base, tmp_path_factory):
    return train(lora_args(trained_base, tmp_path_factory.mktemp("lora-run") / "run"))


def test_lora_run_trains_only_the_adapters_and_lowers_the_loss(lora_run, trained_base):
    base = trained_base[0]
    assert lora_run["lora"] and lora_run["trainable_parameters"] < lora_run["parameters"] / 10
    assert lora_run["val_loss"] < base["val_loss"] - 0.05  # same validation rows
    final = lora_run["final"]
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(os.listdir(final))
    assert not os.path.exists(os.path.join(final, "model.safetensors"))
    config = json.loads(open(os.path.join(final, "adapter_config.json"), encoding="utf-8").read())
    assert config["base_model_name_or_path"] == base["final"] and config["r"] == 4
    for _, path in list_checkpoints(lora_run["out"]):
        assert {"adapter_model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(os.listdir(path))
    # the base model's weights did not move: the merge changes the adapted projections only
    merged = HymbaForCausalLM.from_pretrained(merge_lora(None, final, os.path.join(lora_run["out"], "merged")))
    original = HymbaForCausalLM.from_pretrained(base["final"])
    for name, tensor in original.state_dict().items():
        changed = not torch.equal(merged.state_dict()[name], tensor)
        assert changed == any(t in name for t in SUPPORTED_TARGETS), name


def test_lora_resume_is_exact(lora_run, trained_base, tmp_path):
    out = tmp_path / "cut"
    os.makedirs(out)
    shutil.copytree(os.path.join(lora_run["out"], "checkpoint-00000002"), out / "checkpoint-00000002")
    resumed = train(TrainArgs(**{**vars(lora_args(trained_base, out)), "resume": str(out), "init_from": None,
                                 "lora": None}))
    assert resumed["trained_steps"] == 4 and resumed["lora"]
    assert resumed["losses"] == lora_run["losses"][2:]
    a = load_file(os.path.join(resumed["final"], "adapter_model.safetensors"))
    b = load_file(os.path.join(lora_run["final"], "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # other LoRA settings than the checkpoint's are refused
    with pytest.raises(TrainError, match="differ from those of the resumed adapter"):
        train(TrainArgs(**{**vars(lora_args(trained_base, out)), "resume": str(out), "init_from": None,
                           "lora": "r=8", "max_steps": 8}))


def test_adapter_loads_back_into_the_base(lora_run, trained_base):
    model = HymbaForCausalLM.from_pretrained(trained_base[0]["final"])
    load_lora(model, lora_run["final"])
    merged = HymbaForCausalLM.from_pretrained(os.path.join(lora_run["out"], "merged"))
    ids = torch.randint(3, 500, (2, 10))
    with torch.no_grad():
        assert (model.eval()(ids).logits - merged(ids).logits).abs().max() < 1e-4


def test_cli_lora_run_then_merge(trained_base, tmp_path, capsys):
    summary, corpus = trained_base
    out = tmp_path / "run"
    assert main(["train", "--init-from", summary["final"], "--lora", "r=2,alpha=4,dropout=0.1",
                 "--data", str(corpus), "--out", str(out), "--max-steps", "2", "--seq-len", "16",
                 "--batch-size", "2", "--sample-tokens", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "LoRA adapter parameters (on a" in printed and "sample:" in printed
    assert f"hymba merge-lora --base {summary['final']} --adapter {out / 'final'}" in printed
    assert main(["merge-lora", "--adapter", str(out / "final"), "--out", str(tmp_path / "merged")]) == 0
    assert HymbaForCausalLM.from_pretrained(tmp_path / "merged").config.hidden_size == 32
    # bad input: one line each
    assert main(["merge-lora", "--adapter", str(out / "final"), "--out", str(tmp_path / "merged")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["merge-lora", "--adapter", str(tmp_path / "nothing"), "--out", str(tmp_path / "m2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["merge-lora", "--adapter", summary["final"], "--out", str(tmp_path / "m2")]) == 2
    assert "not a LoRA adapter folder" in capsys.readouterr().err
    assert main(["train", "--init-from", summary["final"], "--lora", "r=2,targets=dt_proj", "--data", str(corpus),
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'dt_proj' is not supported" in err[0]
    # a resumed LoRA run whose base model is gone
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    state = moved / "checkpoint-00000002" / "trainer_state.json"
    saved = json.loads(state.read_text())
    saved["args"]["init_from"] = str(tmp_path / "gone")
    state.write_text(json.dumps(saved))
    assert main(["train", "--resume", str(moved), "--max-steps", "3"]) == 2
    assert "is not a folder any more" in capsys.readouterr().err


def test_lora_with_gradient_checkpointing_gives_the_same_losses(lora_run, trained_base, tmp_path):
    summary = train(lora_args(trained_base, tmp_path / "gc", gradient_checkpointing=True))
    assert summary["losses"] == pytest.approx(lora_run["losses"], rel=1e-5)


def test_lora_is_not_sharded():
    with pytest.raises(TrainError, match="use parallel 'ddp'"):
        TrainArgs(lora="r=4", init_from="/somewhere", parallel="fsdp").validate()

"""Released-format checkpoints: bit-exact round trips, sharding and strict, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hymba import CheckpointError, HymbaConfig, HymbaForCausalLM
from hymba.checkpoint import released_key


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return HymbaForCausalLM(HymbaConfig.from_preset("tiny"))


@pytest.fixture
def saved(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_round_trip_is_bit_exact(saved, tiny_model):
    loaded = HymbaForCausalLM.from_pretrained(saved)
    assert_same_weights(loaded, tiny_model)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = torch.randint(3, 2048, (1, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, tiny_model.eval()(ids).logits)


def test_released_key_names(saved):
    keys = set(load_file(saved / "model.safetensors"))
    assert "lm_head.weight" not in keys  # tied, as in the released checkpoint
    for key in (
        "model.memory_tokens", "model.embed_tokens.weight", "model.final_layernorm.weight",
        "model.layers.1.mamba.in_proj.weight", "model.layers.1.mamba.x_proj.0.weight",
        "model.layers.1.mamba.dt_proj.0.bias", "model.layers.1.mamba.A_log.0", "model.layers.1.mamba.D.0",
        "model.layers.1.mamba.pre_avg_layernorm1.weight", "model.layers.1.mamba.pre_avg_layernorm2.weight",
        "model.layers.1.moe.experts.0.down_proj.weight", "model.layers.1.pre_moe_layernorm.weight",
    ):
        assert key in keys, key
    assert released_key("model.layers.3.mixer.ssm.B_layernorm.weight") == "model.layers.3.mamba.B_layernorm.weight"


def test_fixture_keys_load_exactly(fixture_dir, tmp_path):
    model = HymbaForCausalLM.from_pretrained(fixture_dir, dtype="float32")
    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(fixture_dir / "model.safetensors"))
    original = load_file(fixture_dir / "model.safetensors")
    for key, tensor in load_file(tmp_path / "model.safetensors").items():
        assert torch.equal(tensor, original[key]), key


def test_sharded_round_trip(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path, max_shard_size="1MB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "model.safetensors").exists()
    assert_same_weights(HymbaForCausalLM.from_pretrained(tmp_path), tiny_model)
    tiny_model.save_pretrained(tmp_path)  # re-save unsharded: stale shards are removed
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]


def test_dtype_and_device_arguments(saved):
    model = HymbaForCausalLM.from_pretrained(saved, dtype=torch.bfloat16, device="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    with torch.no_grad():
        assert model(torch.tensor([[1, 5, 9]])).logits.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        HymbaForCausalLM.from_pretrained(saved, dtype="int8")


def test_float64_round_trip(tmp_path, tiny_model):
    tiny_model.double().save_pretrained(tmp_path / "f64")
    loaded = HymbaForCausalLM.from_pretrained(tmp_path / "f64")
    assert loaded.dtype == torch.float64 and loaded.config.torch_dtype == "float64"
    assert_same_weights(loaded, tiny_model)


def test_tied_head_present_in_file_is_accepted(saved):
    tensors = load_file(saved / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, saved / "model.safetensors")
    HymbaForCausalLM.from_pretrained(saved)


def rewrite(saved, edit):
    tensors = load_file(saved / "model.safetensors")
    edit(tensors)
    save_file(tensors, saved / "model.safetensors")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("model.layers.2.mamba.out_proj.weight"), "missing tensors.*layers.2.mamba.out_proj"),
        (lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(2)}), "unexpected tensors.*extra"),
        (lambda t: t.update({"model.layers.1.mamba.D.0": torch.zeros(7)}), r"mis-shaped.*D\.0"),
        (lambda t: t["model.final_layernorm.weight"].fill_(float("nan")), "NaN"),
    ],
)
def test_mismatched_tensors_are_listed(saved, edit, message):
    rewrite(saved, edit)
    with pytest.raises(CheckpointError, match=message):
        HymbaForCausalLM.from_pretrained(saved)


@pytest.mark.parametrize("int_dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_float_tensor_stored_as_integer_is_refused(saved, int_dtype):
    key = "model.layers.1.mamba.out_proj.weight"
    rewrite(saved, lambda t: t.update({key: t[key].to(int_dtype)}))
    stored = str(int_dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"tensor {key} in .* is stored as {stored}, expected a "
                                              r"floating-point dtype \(loading as float32\)"):
        HymbaForCausalLM.from_pretrained(saved)
    with pytest.raises(CheckpointError, match=r"loading as bfloat16"):
        HymbaForCausalLM.from_pretrained(saved, dtype="bfloat16")


def test_all_problems_in_one_message(saved):
    def edit(t):
        t.pop("model.memory_tokens")
        t["bogus"] = torch.zeros(1)
    rewrite(saved, edit)
    with pytest.raises(CheckpointError) as info:
        HymbaForCausalLM.from_pretrained(saved)
    assert "memory_tokens" in str(info.value) and "bogus" in str(info.value)


def test_truncated_file(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        HymbaForCausalLM.from_pretrained(saved)


def test_garbage_file(saved):
    (saved / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="cannot read"):
        HymbaForCausalLM.from_pretrained(saved)


def test_pickle_weights_are_never_loaded(saved, tiny_model):
    (saved / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), saved / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never unpickles"):
        HymbaForCausalLM.from_pretrained(saved)


def test_bad_config_values(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["num_key_value_heads"] = 3
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="num_key_value_heads"):
        HymbaForCausalLM.from_pretrained(saved)


def test_config_shape_mismatch_is_reported(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="mis-shaped"):
        HymbaForCausalLM.from_pretrained(saved)


def test_missing_folder_and_files(tmp_path, saved):
    with pytest.raises(CheckpointError, match="does not exist"):
        HymbaForCausalLM.from_pretrained(tmp_path / "nope")
    shutil.copy(saved / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        HymbaForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "gone.safetensors"}}')
    with pytest.raises(CheckpointError, match="do not exist"):
        HymbaForCausalLM.from_pretrained(tmp_path)

"""HymbaConfig: released field names, round trips, validation, presets and the layer plan."""

from __future__ import annotations

import json

import pytest

from hymba import ConfigError, HymbaConfig, count_parameters


def test_released_defaults_and_plan():
    cfg = HymbaConfig.from_preset("hymba-1.5b")
    plan = cfg.layer_plan()
    assert [s.index for s in plan if s.is_global] == [0, 15, 31]
    assert sum(s.computes_kv for s in plan) == 17
    assert plan[16].kv_consumers == (17, 18) and plan[18].kv_source == 16
    assert plan[2].kv_slot == plan[1].kv_slot
    assert cfg.qk_head_dim == 64 and cfg.value_head_dim == 128 and cfg.dt_rank == 100


def test_parameter_counts():
    assert count_parameters(HymbaConfig.from_preset("hymba-1.5b")) == 1_522_797_824
    assert 120e6 < count_parameters(HymbaConfig.from_preset("hymba-125m")) < 140e6
    assert 340e6 < count_parameters(HymbaConfig.from_preset("hymba-350m")) < 370e6


def test_round_trip_keeps_unknown_fields(tmp_path):
    data = HymbaConfig.from_preset("tiny").to_dict()
    data["auto_map"] = {"AutoConfig": "configuration_hymba.HymbaConfig"}
    data["conv_dim"] = {"0": 256}
    (tmp_path / "config.json").write_text(json.dumps(data))
    cfg = HymbaConfig.load(tmp_path)
    assert cfg.extra["auto_map"] == data["auto_map"]
    cfg.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == data


def test_fixture_config_loads(fixture_dir):
    cfg = HymbaConfig.load(fixture_dir)
    assert cfg.num_hidden_layers == 8 and cfg.layer_plan()[3].kv_source == 1


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(num_attention_heads=3), "num_attention_heads"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(sliding_window=0), "sliding_window"),
        (dict(kv_reuse_group=[[0, 1]]), "kv_reuse_group"),  # 0 is global
        (dict(kv_reuse_group=[[1, 2], [2, 3]]), "kv_reuse_group"),
        (dict(kv_reuse_group=[[4, 9]]), "kv_reuse_group"),  # out of range
        (dict(kv_reuse_group=[[1]]), "kv_reuse_group"),
        (dict(global_attn_idx=[0, 6]), "global_attn_idx"),
        (dict(hidden_size=-4), "hidden_size"),
        (dict(mixer_type="moe"), "mixer_type"),
        (dict(rope_type="yarn"), "rope_type"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(mlp_hidden_act="gelu"), "mlp_hidden_act"),
        (dict(rope_theta="abc"), "rope_theta"),
        (dict(rope_theta=0), "rope_theta"),
        (dict(rope_theta=-1.0), "rope_theta"),
        (dict(max_position_embeddings=10), "max_position_embeddings"),  # NTK base would be complex
        (dict(orig_max_position_embeddings=0), "orig_max_position_embeddings"),
        (dict(num_experts=4), "num_experts"),
        (dict(tie_word_embeddings="false"), "tie_word_embeddings"),
        (dict(rope=1), "rope"),
        (dict(attention_dropout=1.5), "attention_dropout"),
        (dict(torch_dtype="int8"), "torch_dtype"),
    ],
)
def test_invalid_values_name_the_field(change, field):
    with pytest.raises(ConfigError, match=field):
        HymbaConfig.from_preset("tiny", **change)


def test_numbers_written_as_text_are_read_as_numbers():
    data = {**HymbaConfig.from_preset("tiny").to_dict(), "rope_theta": "1e6", "hidden_size": "128",
            "torch_dtype": "bf16"}
    cfg = HymbaConfig.from_dict(data)
    assert cfg.rope_theta == 1e6 and cfg.hidden_size == 128 and cfg.torch_dtype == "bf16"
    with pytest.raises(ConfigError, match="rope_theta"):
        HymbaConfig.from_dict({**data, "rope_theta": "large"})


def test_malformed_config_files(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        HymbaConfig.load(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ConfigError, match="model_type"):
        HymbaConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        HymbaConfig.load(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        HymbaConfig.load(tmp_path / "missing")
    with pytest.raises(ConfigError, match="unknown preset"):
        HymbaConfig.from_preset("gpt-5")


@pytest.mark.parametrize(
    "variant",
    [
        dict(mixer_type="attention"),
        dict(mixer_type="ssm", kv_reuse_group=[], global_attn_idx=[]),
        dict(num_memory_tokens=0),
        dict(global_attn_idx=[]),
        dict(sliding_window=None, kv_reuse_group=[]),
        dict(kv_reuse_group=[]),
    ],
)
def test_ablation_switches_are_valid_configs(variant):
    cfg = HymbaConfig.from_preset("tiny", **variant)
    plan = cfg.layer_plan()
    assert len(plan) == cfg.num_hidden_layers
    if cfg.mixer_type == "ssm":
        assert not any(s.has_attention for s in plan)
    if cfg.sliding_window is None:
        assert all(s.is_global for s in plan)


def test_preset_layouts_are_pinned():
    """The Table 11 presets' layouts, written out (they come from config.hymba_layout, the rule
    the ablation uses too)."""
    from hymba.config import PRESETS, hymba_layout

    assert PRESETS["hymba-350m"]["global_attn_idx"] == [0, 15, 31]
    assert PRESETS["hymba-350m"]["kv_reuse_group"] == [
        [1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14],
        [16, 17], [18, 19], [20, 21], [22, 23], [24, 25], [26, 27], [28, 29, 30]]
    assert PRESETS["hymba-125m"]["global_attn_idx"] == [0, 11, 23]
    assert PRESETS["hymba-125m"]["kv_reuse_group"] == [
        [1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [12, 13], [14, 15], [16, 17], [18, 19], [20, 21, 22]]
    for name, layers in (("hymba-350m", 32), ("hymba-125m", 24)):
        assert {k: PRESETS[name][k] for k in ("global_attn_idx", "kv_reuse_group")} == hymba_layout(layers)
    assert hymba_layout(6) == {"global_attn_idx": [0, 2, 5], "kv_reuse_group": [[3, 4]]}

"""Model configuration: the released ``config.json`` fields, presets, validation and the layer plan.

Field names are those of NVIDIA's released ``config.json`` so that a released checkpoint folder
loads as is. Fields this library does not use are kept in ``extra`` and written back unchanged.

Everything that differs between layers (global or sliding-window attention, who computes the K/V
a layer attends over, which branches a layer has) is derived once, by :meth:`HymbaConfig.layer_plan`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .jsonfile import write_json

MixerType = Literal["hybrid", "attention", "ssm"]


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the field."""


# torch dtype names (and the usual aliases) that a checkpoint's ``torch_dtype`` may give.
FLOAT_DTYPE_NAMES = frozenset({"float32", "float", "fp32", "bfloat16", "bf16", "float16", "half", "fp16",
                               "float64", "double"})


def numbers_from_text(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """``values`` with numbers written as text made numbers, for the fields of dataclass ``cls``
    annotated ``int`` or ``float`` (also ``... | None``): PyYAML reads ``1e-3`` as a string (YAML 1.1
    floats need a dot). Text that is not a number is left for validation to name."""
    out = dict(values)
    for f in dataclasses.fields(cls):
        value = values.get(f.name)
        kind = str(f.type).split(" ")[0]
        if not isinstance(value, str) or kind not in ("int", "float"):
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if kind == "float":
            out[f.name] = number
        elif number.is_integer():
            out[f.name] = int(number)
    return out


@dataclass(frozen=True)
class LayerSpec:
    """What one decoder layer is. Built by :meth:`HymbaConfig.layer_plan`, read everywhere else.

    ``window`` is ``None`` for a global (full causal) attention layer. ``kv_source`` is the index of
    the layer whose K/V this layer attends over (itself for a layer that computes its own K/V).
    ``kv_slot`` numbers the K/V producers 0, 1, ... so a cache can allocate one entry per producer.
    """

    index: int
    has_attention: bool
    has_ssm: bool
    window: int | None
    kv_source: int
    kv_slot: int
    kv_consumers: tuple[int, ...] = ()

    @property
    def is_global(self) -> bool:
        return self.has_attention and self.window is None

    @property
    def computes_kv(self) -> bool:
        return self.has_attention and self.kv_source == self.index

    @property
    def kind(self) -> str:
        """A short human description, e.g. ``"SWA, KV producer for 2,3"``."""
        if not self.has_attention:
            return "SSM only"
        parts = ["global" if self.is_global else f"SWA({self.window})"]
        if not self.computes_kv:
            parts.append(f"reuses KV of {self.kv_source}")
        elif self.kv_consumers:
            parts.append("KV producer for " + ",".join(map(str, self.kv_consumers)))
        if not self.has_ssm:
            parts.append("no SSM")
        return ", ".join(parts)


@dataclass
class HymbaConfig:
    """Hymba model configuration (released field names; see ``hymba-architecture.md`` §1)."""

    vocab_size: int = 32001
    hidden_size: int = 1600
    intermediate_size: int = 5504
    num_hidden_layers: int = 32
    num_attention_heads: int = 25
    num_key_value_heads: int = 5
    hidden_act: str = "silu"
    mlp_hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    sliding_window: int | None = 1024
    global_attn_idx: list[int] | None = field(default_factory=lambda: [0, 15, 31])
    kv_reuse_group: list[list[int]] | None = field(
        default_factory=lambda: [[i, i + 1] for i in range(1, 15, 2)]
        + [[16, 17, 18]]
        + [[i, i + 1] for i in range(19, 31, 2)]
    )
    num_memory_tokens: int = 128
    memory_tokens_interspersed_every: int = 0
    rope: bool = True
    rope_theta: float = 10000.0
    rope_type: str | None = "ntk"
    max_position_embeddings: int = 8192
    orig_max_position_embeddings: int | None = 2048
    kq_norm: str | None = "none"
    kq_head_dim: int = -1
    attn_hidden_size: int = -1
    v_head_dim: int | None = None
    mamba_expand: int = 2
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_dt_rank: int | str = "auto"
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mamba_inner_layernorms: bool = True
    num_experts: int = 1
    num_experts_per_tok: int = 1
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    torch_dtype: str | None = "bfloat16"
    model_type: str = "hymba"
    # This library's own switch for the paper's ablations: which branches every layer has.
    mixer_type: MixerType = "hybrid"
    # Released fields with no effect on the computation, and unknown fields: kept verbatim.
    extra: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------------------------------
    # Derived sizes
    def __post_init__(self) -> None:
        self.validate()

    @property
    def d_inner(self) -> int:
        """Mamba inner width I = mamba_expand * hidden_size (also the attention output width)."""
        return self.mamba_expand * self.hidden_size

    @property
    def attn_width(self) -> int:
        return self.hidden_size if self.attn_hidden_size in (-1, None) else self.attn_hidden_size

    @property
    def qk_head_dim(self) -> int:
        return self.attn_width // self.num_attention_heads

    @property
    def value_head_dim(self) -> int:
        """V head dim; the reference always derives it as I / num_attention_heads."""
        return self.d_inner // self.num_attention_heads

    @property
    def dt_rank(self) -> int:
        if self.mamba_dt_rank == "auto":
            return math.ceil(self.hidden_size / 16)
        return int(self.mamba_dt_rank)

    @property
    def has_attention(self) -> bool:
        return self.mixer_type in ("hybrid", "attention")

    @property
    def has_ssm(self) -> bool:
        return self.mixer_type in ("hybrid", "ssm")

    # ----------------------------------------------------------------------------------------
    # Validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""

        def fail(name: str, why: str) -> None:
            raise ConfigError(f"invalid config field {name!r} = {getattr(self, name)!r}: {why}")

        for name in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "mamba_expand", "mamba_d_state",
            "mamba_d_conv", "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(name, "must be a positive integer")
        for name in ("tie_word_embeddings", "rope", "mamba_conv_bias", "mamba_proj_bias",
                     "mamba_inner_layernorms"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be true or false")
        for name in ("rope_theta", "initializer_range"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                fail(name, "must be a positive number")
        if not isinstance(self.attention_dropout, (int, float)) or not 0 <= self.attention_dropout < 1:
            fail("attention_dropout", "must be a number in [0, 1)")
        for name in ("num_experts", "num_experts_per_tok"):
            if getattr(self, name) != 1:
                fail(name, "only 1 (no mixture of experts) is supported")
        if self.torch_dtype is not None and self.torch_dtype not in FLOAT_DTYPE_NAMES:
            fail("torch_dtype", "must name a floating-point dtype such as float32, bfloat16 or float16")
        if self.mixer_type not in ("hybrid", "attention", "ssm"):
            fail("mixer_type", "must be 'hybrid', 'attention' or 'ssm'")
        if not (isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0):
            fail("rms_norm_eps", "must be a positive number")
        if not isinstance(self.num_memory_tokens, int) or self.num_memory_tokens < 0:
            fail("num_memory_tokens", "must be a non-negative integer")
        if self.memory_tokens_interspersed_every not in (0, None):
            fail("memory_tokens_interspersed_every", "only 0 (meta tokens at the start) is supported")
        if self.hidden_act != "silu":
            fail("hidden_act", "only 'silu' is supported")
        if self.mlp_hidden_act not in ("silu", "relu2"):
            fail("mlp_hidden_act", "must be 'silu' or 'relu2'")
        if self.kq_norm not in ("none", None):
            fail("kq_norm", "only 'none' is supported")
        if self.kq_head_dim not in (-1, None) and self.kq_head_dim != self.qk_head_dim:
            fail("kq_head_dim", "only -1 (attention width / heads) is supported")
        if self.attn_width % self.num_attention_heads:
            fail("num_attention_heads", f"must divide the attention width {self.attn_width}")
        if self.d_inner % self.num_attention_heads:
            fail("num_attention_heads", f"must divide the Mamba inner width {self.d_inner}")
        if self.num_attention_heads % self.num_key_value_heads:
            fail("num_key_value_heads", "must divide num_attention_heads")
        if self.has_attention and self.rope and self.qk_head_dim % 2:
            fail("num_attention_heads", "RoPE needs an even query/key head dim")
        if self.mamba_dt_rank != "auto" and (
            not isinstance(self.mamba_dt_rank, int) or self.mamba_dt_rank < 1
        ):
            fail("mamba_dt_rank", "must be 'auto' or a positive integer")
        if self.sliding_window is not None and (
            not isinstance(self.sliding_window, int) or self.sliding_window < 1
        ):
            fail("sliding_window", "must be null (all layers global) or an integer >= 1")
        if self.rope_type not in (None, "default", "ntk"):
            fail("rope_type", "must be null, 'default' or 'ntk'")
        orig = self.orig_max_position_embeddings
        if orig is not None and (not isinstance(orig, int) or isinstance(orig, bool) or orig < 1):
            fail("orig_max_position_embeddings", "must be null or a positive integer")
        if self.has_attention and self.rope and self.rope_type == "ntk":
            if not orig:
                fail("orig_max_position_embeddings", "is required by rope_type 'ntk'")
            if 2 * self.max_position_embeddings <= orig:  # NTK base (2 * max / orig - 1) ** ...
                fail("max_position_embeddings", f"must exceed orig_max_position_embeddings / 2 = {orig / 2:g} "
                     "for rope_type 'ntk'")
            if self.qk_head_dim <= 2:
                fail("num_attention_heads", "rope_type 'ntk' needs a query/key head dim above 2")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            fail("pad_token_id", f"must lie in [0, vocab_size={self.vocab_size})")
        n = self.num_hidden_layers
        globals_ = self.global_attn_idx or []
        for i in globals_:
            if not isinstance(i, int) or not 0 <= i < n:
                fail("global_attn_idx", f"layer {i!r} is outside 0..{n - 1}")
        if len(set(globals_)) != len(globals_):
            fail("global_attn_idx", "lists a layer twice")
        seen: set[int] = set()
        for group in self.kv_reuse_group or []:
            if not isinstance(group, (list, tuple)) or len(group) < 2:
                fail("kv_reuse_group", f"group {group!r} needs a producer and at least one consumer")
            for i in group:
                if not isinstance(i, int) or not 0 <= i < n:
                    fail("kv_reuse_group", f"layer {i!r} is outside 0..{n - 1}")
                if i in seen:
                    fail("kv_reuse_group", f"layer {i} is in more than one group")
                if i in globals_ and self.sliding_window is not None:
                    fail("kv_reuse_group", f"layer {i} is a global layer and cannot share K/V")
                seen.add(i)
            if list(group) != sorted(group):
                fail("kv_reuse_group", f"group {group!r} must list the producer first, in order")

    # ----------------------------------------------------------------------------------------
    # The layer plan
    def layer_plan(self) -> tuple[LayerSpec, ...]:
        """One :class:`LayerSpec` per layer."""
        n = self.num_hidden_layers
        globals_ = set(self.global_attn_idx or [])
        source = list(range(n))
        consumers: dict[int, tuple[int, ...]] = {}
        if self.has_attention:
            for group in self.kv_reuse_group or []:
                consumers[group[0]] = tuple(group[1:])
                for i in group[1:]:
                    source[i] = group[0]
        slots: dict[int, int] = {}
        plan = []
        for i in range(n):
            if self.has_attention and source[i] == i:
                slots[i] = len(slots)
            window = None if (self.sliding_window is None or i in globals_) else self.sliding_window
            plan.append(
                LayerSpec(
                    index=i,
                    has_attention=self.has_attention,
                    has_ssm=self.has_ssm,
                    window=window if self.has_attention else None,
                    kv_source=source[i],
                    kv_slot=slots.get(source[i], -1),
                    kv_consumers=consumers.get(i, ()),
                )
            )
        return tuple(plan)

    # ----------------------------------------------------------------------------------------
    # (De)serialisation
    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` content: released field names, derived bookkeeping, extras."""
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        out["v_head_dim"] = self.value_head_dim
        out.setdefault("architectures", ["HymbaForCausalLM"])
        return dict(sorted(out.items()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HymbaConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = numbers_from_text({k: v for k, v in data.items() if k in known}, cls)
        extra = {k: v for k, v in data.items() if k not in known}
        _warn_misspelled(extra, known)
        if "model_type" in data and data["model_type"] != "hymba":
            raise ConfigError(f"config model_type is {data['model_type']!r}, expected 'hymba'")
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as exc:  # pragma: no cover - defensive: wrong argument types
            raise ConfigError(f"malformed config: {exc}") from None

    def save(self, folder: str | os.PathLike) -> None:
        write_json(os.path.join(folder, "config.json"), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> HymbaConfig:
        """Read ``config.json`` (``path`` may be the file or its folder)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ConfigError(f"no config.json at {path}")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> HymbaConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> HymbaConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


class ConfigWarning(UserWarning):
    """A config key that looks like a misspelled field (kept in ``extra``, otherwise unused)."""


def _warn_misspelled(extra: dict[str, Any], known: set[str]) -> None:
    """Warn about unknown keys that are close to a field name (``hiden_size``): the value is kept
    and written back, but nothing reads it. Keys far from every field (the released config's
    bookkeeping) pass silently."""
    import difflib
    import warnings

    for key in extra:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            warnings.warn(f"config key {key!r} is not a Hymba setting and is ignored; did you mean "
                          f"{close[0]!r}?", ConfigWarning, stacklevel=3)


def global_layers(num_layers: int) -> list[int]:
    """The layers with global attention in Hymba's layout: the first, the middle
    (``num_layers // 2 - 1``) and the last, as the released model's [0, 15, 31] of 32."""
    return sorted({0, num_layers // 2 - 1, num_layers - 1})


def kv_share_groups(num_layers: int, global_idx: Sequence[int]) -> list[list[int]]:
    """K/V-sharing groups of Hymba's layout: within each run of consecutive sliding-window layers
    (the layers not in ``global_idx``), adjacent pairs share K/V, the first of a pair computing it;
    a run of odd length ends in a group of three. (The released 1.5B model, whose default
    config spells its groups out, puts its group of three first after the middle layer:
    [16, 17, 18].)"""
    groups: list[list[int]] = []
    run: list[int] = []
    for i in [*range(num_layers), None]:
        if i is not None and i not in global_idx:
            run.append(i)
            continue
        pairs = [run[j : j + 2] for j in range(0, len(run) - 1, 2)]
        if len(run) % 2 and pairs:
            pairs[-1].append(run[-1])
        groups += pairs
        run = []
    return groups


def hymba_layout(num_layers: int) -> dict[str, list]:
    """The config fields of Hymba's layer layout (paper Table 11, the released model):
    ``global_attn_idx`` from :func:`global_layers` and ``kv_reuse_group`` from
    :func:`kv_share_groups`; every other layer uses sliding-window attention."""
    globals_ = global_layers(num_layers)
    return {"global_attn_idx": globals_, "kv_reuse_group": kv_share_groups(num_layers, globals_)}


def _family(layers: int, hidden: int, heads: int, kv_heads: int, mlp: int, **kw: Any) -> dict:
    """Paper Table 11 shape: Hymba's layout (:func:`hymba_layout`), 128 meta tokens, window 1024."""
    return dict(
        num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=mlp, **hymba_layout(layers), **kw,
    )


PRESETS: dict[str, dict[str, Any]] = {
    # The released Hymba-1.5B-Base/-Instruct shape (1,522,797,824 parameters).
    "hymba-1.5b": dict(mamba_dt_rank=100),
    # Paper Table 11 (not released; vocabulary as the released tokenizer).
    "hymba-350m": _family(32, 768, 12, 4, 2432),
    "hymba-125m": _family(24, 512, 8, 4, 1664),
    # A few-hundred-thousand-parameter model for tests and CPU demos: every layer kind occurs.
    "tiny": dict(
        vocab_size=2048, hidden_size=128, intermediate_size=320, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=64, global_attn_idx=[0, 3, 5],
        kv_reuse_group=[[1, 2]], num_memory_tokens=16, max_position_embeddings=2048,
        orig_max_position_embeddings=2048, torch_dtype="float32",
    ),
}

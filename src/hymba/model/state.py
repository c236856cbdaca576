"""The contract between the model and whatever keeps its state from one call to the next.

A forward pass given a ``state`` continues the sequences that the state holds instead of
starting new ones. The model asks the state for two things and nothing else:

- :class:`SequenceState` frames a call: :meth:`~SequenceState.layout` says where the new tokens
  sit (their positions, which of them are real) and :meth:`~SequenceState.advance` marks them as
  stored once the layers have run;
- :class:`LayerState` is what each layer reads and writes: its K/V (a producer stores its new
  K/V and gets back what its queries attend over), and the SSM branch's conv inputs and state.

:class:`hymba.inference.HybridCache` is the generation cache that implements both; the meta-token
recorder in the same package implements :class:`LayerState` alone. The model never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from .. import ops
from ..ops.decode_attention import DecodeKeys

if TYPE_CHECKING:
    from ..config import LayerSpec
    from .layout import SequenceLayout


@dataclass
class SharedKV:
    """K/V computed by a producer layer, as its consumers attend over them."""

    k: Tensor  # (b, Hkv, Lk, d_qk), after RoPE
    v: Tensor  # (b, Hkv, Lk, d_v)
    k_pos: Tensor | None  # (Lk,) or (b, Lk); None at a decode step
    k_valid: Tensor | None  # (b, Lk) or None
    # Decode from a cache: always-visible K/V kept once per model (the meta tokens) and which
    # of k/v each row's query sees; k_pos/k_valid are then not used.
    prefix: tuple[Tensor, Tensor] | None = None
    decode: DecodeKeys | None = None
    # attention masks built for these keys, by window: the producer builds one, its consumers
    # (same positions, same keys) reuse it
    masks: dict = field(default_factory=dict, repr=False, compare=False)


def rotate(x: Tensor, rotary: tuple[Tensor, Tensor] | None) -> Tensor:
    """Heads ``x`` with their rotary embedding (none for ``rotary=None``). Under autocast the
    result is in the autocast dtype, as attention then computes: rotated with the (float32)
    tables and rounded once."""
    if rotary is None:
        return x
    autocast = torch.is_autocast_enabled(x.device.type)
    return ops.apply_rotary(x, *rotary, dtype=torch.get_autocast_dtype(x.device.type) if autocast else None)


class LayerState(Protocol):
    """Per-layer state the attention and SSM branches read and write during a forward."""

    def update_kv(
        self, spec: LayerSpec, k: Tensor, v: Tensor, layout: SequenceLayout,
        rotary: tuple[Tensor, Tensor] | None,
    ) -> SharedKV:
        """Store a K/V producer's new K/V (b, Hkv, L, d), ``k`` before its rotary embedding, and
        return what its queries (and its consumers') attend over."""
        ...

    def conv_state(self, layer: int) -> Tensor | None:
        """The conv inputs before this call (b, d_inner, d_conv), or None for a fresh sequence."""
        ...

    def ssm_state(self, layer: int) -> Tensor | None:
        """The SSM state before this call (b, d_inner, d_state), or None for a fresh sequence."""
        ...

    def store_ssm(self, layer: int, x: Tensor, ssm_state: Tensor) -> None:
        """After a multi-token call: keep the conv inputs ``x`` (b, L, d_inner) it needs and the
        new SSM state. (A single-token call updates :meth:`conv_state`/:meth:`ssm_state` in
        place.)"""
        ...


class SequenceState(LayerState, Protocol):
    """A :class:`LayerState` that also knows where each of its sequences stands."""

    def layout(self, num_tokens: int, num_new: Tensor | None = None) -> SequenceLayout:
        """Where ``num_tokens`` new tokens per row go; ``num_new`` (b,) says how many of them
        are real when rows are right-padded (None: all). Raises InputError if they do not fit."""
        ...

    def advance(self, num_tokens: int) -> None:
        """Mark the tokens framed by the last :meth:`layout` call as stored."""
        ...

"""Where every position of a (possibly left-padded) batch sits inside the model.

Inside the model each row is ``[padding][meta tokens][real tokens]``: padding goes in front of
the meta tokens, so every row's meta tokens and real tokens see exactly what they would see alone.
Positions restart at 0 on each row's first meta token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .state import LayerState


class InputError(ValueError):
    """Bad model input (ids, attention mask). The message says what is wrong."""


@dataclass
class SequenceLayout:
    """Per-forward facts shared by all layers.

    ``positions``: (L,) when all rows are aligned, else (b, L); ``token_valid``: (b, L) or None
    when no row is padded; ``cos``/``sin``: rotary tables for ``positions``; ``state``: where
    the layers keep K/V and SSM state across calls (:class:`~hymba.model.state.LayerState`),
    or None; ``start``: ``positions[0]`` as a Python int where it is known without reading the
    device (1-D positions built on the host), else None.
    """

    positions: Tensor
    token_valid: Tensor | None
    num_meta: int
    cos: Tensor | None = None
    sin: Tensor | None = None
    state: LayerState | None = None
    start: int | None = None

    @property
    def rotary(self) -> tuple[Tensor, Tensor] | None:
        """(cos, sin), or None for a model without rotary embeddings."""
        return None if self.cos is None else (self.cos, self.sin)


def left_padding(attention_mask: Tensor | None, input_ids: Tensor) -> Tensor | None:
    """Number of leading pad tokens per row, or None if no row is left-padded.

    Accepts masks of the form ``0…0 1…1 0…0``: trailing zeros (right padding) need no handling in
    a causal model. A mask with a hole inside the real tokens is rejected.
    """
    if attention_mask is None:
        return None
    if attention_mask.shape != input_ids.shape:
        raise InputError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match "
            f"input_ids shape {tuple(input_ids.shape)}"
        )
    mask = attention_mask.to(torch.bool)
    if not bool(mask.any(-1).all()):
        raise InputError("attention_mask has a row with no real token")
    pads = (~mask).to(torch.int64).cumprod(-1).sum(-1)  # leading zeros
    idx = torch.arange(mask.shape[-1], device=mask.device)
    after_first = idx[None] >= pads[:, None]
    # once real tokens start, they must be contiguous: 1…1 then optional 0…0
    ends = mask & after_first
    last = torch.where(ends, idx[None], -1).max(-1).values
    expected = after_first & (idx[None] <= last[:, None])
    if not bool((mask == expected).all()):
        raise InputError("attention_mask must be left- or right-padded (no holes between tokens)")
    return pads if bool(pads.any()) else None


def padded_layout(pads: Tensor, num_meta: int, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Index maps for a left-padded batch.

    Returns ``(source, positions, valid, output)``: ``source[b, t]`` indexes ``cat(meta, embeds)``
    to build internal position t; ``positions`` and ``valid`` are per internal position;
    ``output[b, j]`` is the internal index holding input position j.
    """
    t = torch.arange(num_meta + n, device=pads.device)[None]
    p = pads[:, None]
    source = torch.where(t < p, num_meta + t, torch.where(t < p + num_meta, t - p, t))
    positions = (t - p).clamp(min=0)
    valid = t >= p
    j = torch.arange(n, device=pads.device)[None]
    output = torch.where(j >= p, j + num_meta, j)
    return source, positions, valid, output


def check_token_ids(input_ids: Tensor, vocab_size: int, mask: Tensor | None = None) -> None:
    """Raise :class:`InputError` unless ``input_ids`` is a non-empty (batch, length) tensor of
    integer ids inside ``[0, vocab_size)``; with ``mask`` (same shape, True = real token) only the
    real tokens are range-checked. Reads the device once (not at all while a CUDA graph is being
    captured, whose caller checks its ids)."""
    if not isinstance(input_ids, Tensor):
        raise InputError(f"input_ids must be a (batch, length) tensor, got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise InputError(f"input_ids must be integer token ids, got {input_ids.dtype}")
    if input_ids.numel() == 0:
        raise InputError(f"input_ids {tuple(input_ids.shape)} is empty: give at least one row of one token")
    if input_ids.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    ids = input_ids if mask is None else torch.where(mask.to(input_ids.device, torch.bool), input_ids, 0)
    lo, hi = torch.stack(torch.aminmax(ids)).tolist()  # one read of the device
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise InputError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")

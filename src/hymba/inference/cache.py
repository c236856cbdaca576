"""HybridCache: preallocated per-layer generation state, laid out by the layer plan.

What each layer keeps (``config.layer_plan()`` decides, nothing else):

- a global K/V producer: K/V for every position after the meta tokens, preallocated to a maximum
  length (slot ``p - M`` holds position ``p``);
- a sliding-window K/V producer: a ring of ``window + 1`` slots (the current token and the
  ``window`` before it, all that a query can see) plus each slot's position; memory does not
  grow with the sequence;
- a K/V consumer: nothing (it reads its producer's entries);
- every layer with an SSM branch: its conv inputs (d_inner × d_conv) and SSM state (d_inner ×
  d_state).

The meta tokens' K/V and the conv/SSM state after them do not depend on the input: they are
computed once per model (:func:`meta_prefix`), every cache starts from them, and the meta K/V are
read in place (batch 1), never copied into a request. All tensors are allocated once and updated
in place; a decode step needs no host synchronisation, so it can be captured in a CUDA graph.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..config import HymbaConfig, LayerSpec
from ..model.layout import InputError, SequenceLayout
from ..model.state import SharedKV, rotate
from ..ops.decode_attention import DecodeKeys
from ..ops.kv_store import store_kv_step, write_slots
from .accounting import cache_bytes

SWADecode = Literal["trained", "reference"]


@dataclass
class RowSnapshot:
    """One sequence's state after ``num_tokens`` real tokens, copied out of a cache row: global
    K/V of those tokens, the occupied sliding-window ring slots and their positions, the conv
    inputs and the SSM state. :meth:`HybridCache.restore_row` puts it into any row of a cache of
    the same model, which then continues exactly as the original row would."""

    num_tokens: int
    k: dict[int, Tensor]
    v: dict[int, Tensor]
    ring_pos: dict[int, Tensor]
    conv: dict[int, Tensor]
    ssm: dict[int, Tensor]

    @property
    def nbytes(self) -> int:
        parts = (self.k, self.v, self.ring_pos, self.conv, self.ssm)
        return sum(t.numel() * t.element_size() for d in parts for t in d.values())


@dataclass
class MetaPrefix:
    """What the meta tokens leave behind: K/V per K/V slot (1, Hkv, M, d) and, per SSM layer,
    the conv inputs (1, d_inner, d_conv) and SSM state (1, d_inner, d_state) after them."""

    k: dict[int, Tensor]
    v: dict[int, Tensor]
    conv: dict[int, Tensor]
    ssm: dict[int, Tensor]


class _MetaRecorder:
    """The :class:`~hymba.model.state.LayerState` the meta tokens run through, once, from an
    empty state: it keeps what they leave behind."""

    def __init__(self, d_conv: int) -> None:
        self.d_conv = d_conv
        self.prefix = MetaPrefix({}, {}, {}, {})

    def update_kv(
        self, spec: LayerSpec, k: Tensor, v: Tensor, layout: SequenceLayout, rotary: tuple[Tensor, Tensor] | None
    ) -> SharedKV:
        k = rotate(k, rotary)
        self.prefix.k[spec.kv_slot], self.prefix.v[spec.kv_slot] = k, v
        return SharedKV(k, v, layout.positions, None)

    def conv_state(self, layer: int) -> None:
        return None

    def ssm_state(self, layer: int) -> None:
        return None

    def store_ssm(self, layer: int, x: Tensor, ssm_state: Tensor) -> None:
        seq = torch.cat([x.new_zeros(x.shape[0], x.shape[2], self.d_conv), x.transpose(1, 2)], -1)
        self.prefix.conv[layer] = seq[..., -self.d_conv :].contiguous()
        self.prefix.ssm[layer] = ssm_state


def params_key(model: torch.nn.Module) -> tuple:
    """Changes whenever a parameter is replaced, moved, cast or modified in place, and whenever
    an adapter layer (one with ``active_adapters``, ``disable_adapters`` and ``merged``, as PEFT's
    LoRA layers have) is switched off or on, merged or unmerged: that changes what the model
    computes without a new parameter version (a merge writes the weights through ``.data``)."""
    params = tuple((id(p), p._version, p.dtype, p.device) for p in model.parameters())
    adapters = tuple((name, bool(m.disable_adapters), bool(m.merged), tuple(m.active_adapters))
                     for name, m in model.named_modules()
                     if all(hasattr(m, a) for a in ("active_adapters", "disable_adapters", "merged")))
    return params + adapters


# model -> (params_key, MetaPrefix); entries go with their model
_PREFIXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def meta_prefix(model: torch.nn.Module) -> MetaPrefix:
    """The meta tokens' K/V and conv/SSM state, computed once per model (and recomputed only
    after its parameters change)."""
    key = params_key(model)
    cached = _PREFIXES.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    config: HymbaConfig = model.config
    recorder = _MetaRecorder(config.mamba_d_conv)
    model.run_meta_tokens(recorder)
    prefix = recorder.prefix
    d, kv_heads = config.d_inner, config.num_key_value_heads
    for spec in config.layer_plan():
        if spec.computes_kv and spec.kv_slot not in prefix.k:
            empty = dict(dtype=model.dtype, device=model.device)
            prefix.k[spec.kv_slot] = torch.zeros(1, kv_heads, 0, config.qk_head_dim, **empty)
            prefix.v[spec.kv_slot] = torch.zeros(1, kv_heads, 0, config.value_head_dim, **empty)
        if spec.has_ssm and spec.index not in prefix.conv:
            prefix.conv[spec.index] = torch.zeros(1, d, config.mamba_d_conv, dtype=model.dtype, device=model.device)
            prefix.ssm[spec.index] = torch.zeros(1, d, config.mamba_d_state, device=model.device)
    _PREFIXES[model] = (key, prefix)
    return prefix


def _fill(t: Tensor, rows: slice | Tensor, value: int) -> None:
    """``t[rows] = value`` as a fill on the device (rows: a slice, or a bool/index tensor)."""
    if isinstance(rows, Tensor):
        if rows.dtype == torch.bool:
            t.masked_fill_(rows.reshape(-1, *([1] * (t.dim() - 1))), value)
        else:
            t.index_fill_(0, rows, value)
    else:
        t[rows].fill_(value)


class HybridCache:
    """Generation state of a batch of ``batch_size`` sequences (see the module docstring).

    ``max_tokens``: capacity of the global layers in real tokens (prompt + new tokens).
    ``swa_decode``: ``"trained"`` (default) decodes sliding-window layers with the window the
    model was trained with, so incremental decoding equals the full forward; ``"reference"``
    keeps one key fewer at decode steps, as NVIDIA's released cache does (bit-for-bit with its
    ``generate``, drifting from its own full forward once a sequence exceeds the window).
    ``ssm_dtype``: dtype of the SSM state (default float32, or float64 for a float64 cache; the
    reference rounds it to the model dtype between steps). ``static_shapes``: decode steps attend
    over the whole preallocated global K/V (masked) rather than the part in use, so every step has
    the same tensor shapes (for CUDA-graph capture). Allocate on ``device="meta"`` to size a cache
    without memory.
    """

    def __init__(
        self,
        config: HymbaConfig,
        batch_size: int,
        max_tokens: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        swa_decode: SWADecode = "trained",
        ssm_dtype: torch.dtype | None = None,
        static_shapes: bool = False,
    ) -> None:
        if swa_decode not in ("trained", "reference"):
            raise ValueError(f"swa_decode must be 'trained' or 'reference', got {swa_decode!r}")
        if batch_size < 1 or max_tokens < 1:
            raise ValueError("a cache needs batch_size >= 1 and max_tokens >= 1")
        self.config, self.plan = config, config.layer_plan()
        self.num_meta, self.max_tokens, self.swa_decode = config.num_memory_tokens, max_tokens, swa_decode
        self.static_shapes = static_shapes
        b, hkv, m = batch_size, config.num_key_value_heads, config.num_memory_tokens
        dqk, dv, d = config.qk_head_dim, config.value_head_dim, config.d_inner
        alloc = dict(dtype=dtype, device=device)
        ssm_dtype = ssm_dtype or torch.promote_types(dtype, torch.float32)
        self.k: dict[int, Tensor] = {}
        self.v: dict[int, Tensor] = {}
        self.ring_pos: dict[int, Tensor] = {}  # sliding-window slots: the position each holds (-1: empty)
        self.window: dict[int, int | None] = {}
        self.meta_k: dict[int, Tensor] = {}
        self.meta_v: dict[int, Tensor] = {}
        self.conv: dict[int, Tensor] = {}
        self.ssm: dict[int, Tensor] = {}
        for spec in self.plan:
            if spec.computes_kv:
                slots = max_tokens if spec.window is None else spec.window + 1
                self.k[spec.kv_slot] = torch.zeros(b, hkv, slots, dqk, **alloc)
                self.v[spec.kv_slot] = torch.zeros(b, hkv, slots, dv, **alloc)
                self.meta_k[spec.kv_slot] = torch.zeros(1, hkv, m, dqk, **alloc)
                self.meta_v[spec.kv_slot] = torch.zeros(1, hkv, m, dv, **alloc)
                self.window[spec.kv_slot] = spec.window
                if spec.window is not None:
                    self.ring_pos[spec.kv_slot] = torch.full((b, slots), -1, dtype=torch.int64, device=device)
            if spec.has_ssm:
                self.conv[spec.index] = torch.zeros(b, d, config.mamba_d_conv, **alloc)
                self.ssm[spec.index] = torch.zeros(b, d, config.mamba_d_state, dtype=ssm_dtype, device=device)
        self.lengths = torch.full((b,), m, dtype=torch.int64, device=device)  # next position per row
        self.extent = 0  # host-side bound on the real tokens any row holds
        self._num_new: Tensor | None = None
        self._parent: HybridCache | None = None
        self._dtypes = (dtype, ssm_dtype)

    def rows(self, start: int, stop: int) -> HybridCache:
        """Rows ``start:stop`` as a cache of their own that shares this one's memory: what is
        stored through the view is stored here (prefill a batch a few rows at a time, or one
        serving slot). The view starts from this cache's :attr:`extent`, and storing through it
        raises this cache's extent as far as the view's."""
        if not 0 <= start < stop <= self.batch_size:
            raise ValueError(f"rows {start}:{stop} of a cache of {self.batch_size}")
        view = object.__new__(HybridCache)
        view.__dict__.update(self.__dict__)
        for name in ("k", "v", "ring_pos", "conv", "ssm"):
            setattr(view, name, {i: t[start:stop] for i, t in getattr(self, name).items()})
        view.meta_k, view.meta_v = dict(self.meta_k), dict(self.meta_v)
        view.lengths = self.lengths[start:stop]
        view._num_new, view._parent = None, self
        return view

    # ------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def reset(self, prefix: MetaPrefix) -> HybridCache:
        """Start every row right after the meta tokens (their K/V are used in place, not copied)."""
        self.meta_k, self.meta_v = dict(prefix.k), dict(prefix.v)
        self.reset_rows(slice(None), prefix)
        self.extent = 0
        return self

    def reset_rows(self, rows: slice | Tensor, prefix: MetaPrefix) -> None:
        """Start rows ``rows`` (a slice or a bool/index tensor) afresh after the meta tokens;
        the other rows keep their state. (Does not lower :attr:`extent`: other rows may need it.)"""
        for i, state in self.conv.items():
            state[rows] = prefix.conv[i].to(state.dtype)
            self.ssm[i][rows] = prefix.ssm[i].to(self.ssm[i].dtype)
        # fills, not `t[rows] = scalar`: that copies the scalar from the host synchronously
        for pos in self.ring_pos.values():
            _fill(pos, rows, -1)
        _fill(self.lengths, rows, self.num_meta)

    def set_extent(self, extent: int) -> None:
        """Tell the cache that no row holds more than ``extent`` real tokens (a scheduler that
        restarts rows knows this on the host; the cache alone only ever raises its bound)."""
        if not 0 <= extent <= self.max_tokens:
            raise ValueError(f"extent {extent} outside [0, {self.max_tokens}]")
        self.extent = extent

    @torch.no_grad()
    def snapshot_row(self, row: int, num_tokens: int) -> RowSnapshot:
        """A copy of row ``row``'s state, which holds ``num_tokens`` real tokens."""
        k, v, ring_pos = {}, {}, {}
        for slot, window in self.window.items():
            used = num_tokens if window is None else min(num_tokens, window + 1)
            k[slot] = self.k[slot][row, :, :used].clone()
            v[slot] = self.v[slot][row, :, :used].clone()
            if window is not None:
                ring_pos[slot] = self.ring_pos[slot][row, :used].clone()
        return RowSnapshot(num_tokens, k, v, ring_pos, {i: t[row].clone() for i, t in self.conv.items()},
                           {i: t[row].clone() for i, t in self.ssm.items()})

    @torch.no_grad()
    def restore_row(self, row: int, snap: RowSnapshot) -> None:
        """Make row ``row`` hold the state of ``snap`` (its next token goes at position
        meta + ``snap.num_tokens``); raises the host bound :attr:`extent` if needed."""
        if snap.num_tokens > self.max_tokens:
            raise InputError(f"a state of {snap.num_tokens} tokens does not fit a cache of {self.max_tokens}")
        for slot in self.window:
            used = snap.k[slot].shape[1]
            self.k[slot][row, :, :used] = snap.k[slot]
            self.v[slot][row, :, :used] = snap.v[slot]
            if slot in self.ring_pos:
                self.ring_pos[slot][row].fill_(-1)
                self.ring_pos[slot][row, :used] = snap.ring_pos[slot]
        for i, t in self.conv.items():
            t[row] = snap.conv[i]
            self.ssm[i][row] = snap.ssm[i]
        self.lengths[row].fill_(self.num_meta + snap.num_tokens)
        self.extent = max(self.extent, snap.num_tokens)

    @torch.no_grad()
    def copy_rows(self, source: HybridCache, source_rows: Tensor, rows: Tensor, num_tokens: int) -> None:
        """Make rows ``rows`` hold the state of ``source``'s rows ``source_rows`` (index tensors
        of equal length; ``source`` is a cache of the same model, capacity and dtypes), whose
        sequences hold at most ``num_tokens`` real tokens: one copy per tensor for all rows."""
        if source.plan != self.plan or source.max_tokens != self.max_tokens or source._dtypes != self._dtypes:
            raise ValueError("copy_rows needs a source cache of the same model, capacity and dtypes")
        if num_tokens > self.max_tokens:
            raise InputError(f"a state of {num_tokens} tokens does not fit a cache of {self.max_tokens}")
        for name in ("k", "v", "ring_pos", "conv", "ssm"):
            mine, theirs = getattr(self, name), getattr(source, name)
            for i, t in mine.items():
                t.index_copy_(0, rows, theirs[i].index_select(0, source_rows))
        self.lengths.index_copy_(0, rows, source.lengths.index_select(0, source_rows))
        self.extent = max(self.extent, num_tokens)

    def check_room(self, num_tokens: int) -> None:
        """Raise :class:`InputError` unless ``num_tokens`` more tokens per row fit."""
        if self.extent + num_tokens > self.max_tokens:
            raise InputError(
                f"the cache holds at most {self.max_tokens} tokens per row; "
                f"{self.extent} are used and {num_tokens} more were given"
            )

    def layout(self, num_tokens: int, num_new: Tensor | None = None) -> SequenceLayout:
        """Layout for ``num_tokens`` new tokens per row; ``num_new`` (b,) says how many of them
        are real when rows are right-padded (None: all). A prompt of several unpadded tokens into
        a fresh cache gets the same 1-D positions on every row, so that its attention can run as
        one sequence after the meta tokens (FlexAttention on CUDA)."""
        self.check_room(num_tokens)
        self._num_new = num_new
        m = self.num_meta
        if self.extent == 0 and num_new is None and num_tokens > 1:
            return SequenceLayout(torch.arange(m, m + num_tokens, device=self.lengths.device), None, m,
                                  state=self, start=m)
        steps = torch.arange(num_tokens, device=self.lengths.device)
        valid = None if num_new is None else steps[None] < num_new[:, None]
        return SequenceLayout(self.lengths[:, None] + steps, valid, m, state=self)

    def advance(self, num_tokens: int) -> None:
        """Mark the tokens given to the last :meth:`layout` call as stored."""
        self.lengths += num_tokens if self._num_new is None else self._num_new
        self._num_new = None
        self.count_replayed(num_tokens)

    def count_replayed(self, num_tokens: int) -> None:
        """Host-side bookkeeping of ``num_tokens`` stored per row: :meth:`advance` without its
        device part. A replayed CUDA graph of a step ran :meth:`advance`'s device update (the
        lengths) but no Python, so its replayer calls this instead."""
        self.extent += num_tokens
        if self._parent is not None and self._parent.extent < self.extent:
            self._parent.extent = self.extent

    def uncount(self, num_tokens: int) -> None:
        """Undo :meth:`count_replayed` for a step that was captured into a CUDA graph: capturing
        runs the Python (so it counted) but no kernel (so nothing was stored)."""
        self.extent -= num_tokens

    # ------------------------------------------------------------------------------------
    # Hooks called by the model
    def update_kv(
        self, spec: LayerSpec, k: Tensor, v: Tensor, layout: SequenceLayout, rotary: tuple[Tensor, Tensor] | None
    ) -> SharedKV:
        """Store a producer's new K/V (b, Hkv, L, d), k before its rotary embedding ``rotary``
        (cos, sin), and return what its queries attend over."""
        if k.shape[2] == 1 and layout.token_valid is None:  # a decode step (no row padded)
            return self._decode_kv(spec.kv_slot, k, v, layout.positions, rotary)
        return self._prefill_kv(spec.kv_slot, rotate(k, rotary), v, layout)

    def conv_state(self, layer: int) -> Tensor:
        return self.conv[layer]

    def ssm_state(self, layer: int) -> Tensor:
        return self.ssm[layer]

    def store_ssm(self, layer: int, x: Tensor, ssm_state: Tensor) -> None:
        """After a multi-token call: keep each row's last d_conv real conv inputs (``x``: b, L,
        d_inner) and its SSM state (padding left it unchanged)."""
        conv = self.conv[layer]
        seq = torch.cat([conv, x.transpose(1, 2).to(conv.dtype)], dim=-1)  # (b, d, K + L)
        kernel = conv.shape[-1]
        if self._num_new is None:
            conv.copy_(seq[..., -kernel:])
        else:
            idx = self._num_new[:, None] + torch.arange(kernel, device=seq.device)[None]
            conv.copy_(torch.gather(seq, 2, idx[:, None].expand(-1, seq.shape[1], -1)))
        self.ssm[layer].copy_(ssm_state)

    # ------------------------------------------------------------------------------------
    def _decode_kv(self, slot: int, k: Tensor, v: Tensor, pos: Tensor, rotary: tuple[Tensor, Tensor] | None) -> SharedKV:
        """One token per row at positions ``pos`` (b, 1): rotate k and write in place; visibility
        by position."""
        m, window = self.num_meta, self.window[slot]
        if window is None:
            ring = None
            used = self.max_tokens if self.static_shapes else self.extent + 1
            keys = DecodeKeys(pos, None, first_pos=m)  # slot s holds position m + s
        else:
            ring = self.ring_pos[slot]
            used = ring.shape[1]
            limit = window - 1 if self.swa_decode == "reference" else window
            keys = DecodeKeys(pos, ring, first_pos=m, limit=limit)
        store_kv_step(self.k[slot], self.v[slot], k, v, pos, m, ring, rotary)
        kv = (self.k[slot][:, :, :used], self.v[slot][:, :, :used])
        prefix = (self.meta_k[slot], self.meta_v[slot])
        return SharedKV(*kv, None, None, prefix=prefix, decode=keys)

    def _prefill_kv(self, slot: int, k: Tensor, v: Tensor, layout: SequenceLayout) -> SharedKV:
        """Several tokens per row: attend over meta + stored + new keys, then store the new ones."""
        b, m, window = k.shape[0], self.num_meta, self.window[slot]
        pos, valid = layout.positions, layout.token_valid
        keys = [self.meta_k[slot].expand(b, -1, -1, -1)]
        values = [self.meta_v[slot].expand(b, -1, -1, -1)]
        if pos.dim() == 1:  # a fresh cache, rows alike: the meta tokens and the prompt are one sequence
            key_pos = torch.arange(m + pos.shape[0], device=pos.device)
            shared = SharedKV(torch.cat(keys + [k], 2), torch.cat(values + [v], 2), key_pos, None)
            self._store_new(slot, k, v, pos.expand(b, -1))
            return shared
        if valid is None:
            valid = torch.ones_like(pos, dtype=torch.bool)
        meta_pos = torch.arange(m, device=pos.device).expand(b, m)
        key_pos, key_valid = [meta_pos], [torch.ones_like(meta_pos, dtype=torch.bool)]
        if self.extent:
            if window is None:
                stored = torch.arange(m, m + self.extent, device=pos.device).expand(b, -1)
                stored_valid = stored < self.lengths[:, None]
                keys.append(self.k[slot][:, :, : self.extent])
                values.append(self.v[slot][:, :, : self.extent])
            else:
                stored = self.ring_pos[slot]
                stored_valid = stored >= 0
                keys.append(self.k[slot])
                values.append(self.v[slot])
            key_pos.append(stored)
            key_valid.append(stored_valid)
        shared = SharedKV(
            torch.cat(keys + [k], 2), torch.cat(values + [v], 2),
            torch.cat(key_pos + [pos], 1), torch.cat(key_valid + [valid], 1),
        )
        self._store_new(slot, k, v, pos)
        return shared

    def _store_new(self, slot: int, k: Tensor, v: Tensor, pos: Tensor) -> None:
        """Keep a prefill's new K/V (b, Hkv, L, d) at positions ``pos`` (b, L)."""
        if self.window[slot] is None:
            write_slots(self.k[slot], pos - self.num_meta, k)
            write_slots(self.v[slot], pos - self.num_meta, v)
        else:
            self._fill_ring(slot, k, v, pos)

    def _fill_ring(self, slot: int, k: Tensor, v: Tensor, pos: Tensor) -> None:
        """Put each row's newest real tokens into their ring slots (older ones are overwritten)."""
        ring = self.ring_pos[slot]
        size, m = ring.shape[1], self.num_meta
        n = pos.shape[1] if self._num_new is None else self._num_new[:, None]  # an int broadcasts
        start = pos[:, :1]
        s = torch.arange(size, device=pos.device)[None]
        # the newest new token j < n whose position lands in slot s, or a negative j if none does
        j = n - 1 - torch.remainder(start + n - 1 - m - s, size)
        take = j >= 0
        j = j.clamp(min=0)
        ring.copy_(torch.where(take, start + j, ring))
        for store, new in ((self.k[slot], k), (self.v[slot], v)):
            picked = torch.gather(new, 2, j[:, None, :, None].expand(-1, new.shape[1], -1, new.shape[3]))
            store.copy_(torch.where(take[:, None, :, None], picked, store))

    # ------------------------------------------------------------------------------------
    def nbytes(self) -> dict[str, int]:
        """Bytes by part, as :func:`hymba.inference.accounting.cache_bytes` counts them for this
        cache's batch size, capacity and dtypes (``meta_kv`` is one copy per model, shared by every
        request; ``total`` excludes it)."""
        dtype, ssm_dtype = self._dtypes
        return cache_bytes(self.config, self.max_tokens, batch=self.batch_size,
                           dtype_bytes=torch.empty((), dtype=dtype).element_size(),
                           ssm_dtype_bytes=torch.empty((), dtype=ssm_dtype).element_size())

    def allocated_bytes(self) -> int:
        """Bytes of the tensors this cache holds (without the shared meta K/V): what
        :meth:`nbytes` ``["total"]`` must equal."""
        tensors = [*self.k.values(), *self.v.values(), *self.ring_pos.values(), *self.conv.values(),
                   *self.ssm.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

"""The serving engine: continuous batching over the hybrid cache, usable without HTTP.

One decode batch keeps running; requests join and leave it between steps. Each :meth:`Engine.step`

1. ends aborted requests and frees their state at once;
2. admits waiting requests while a decode slot and a prefill row are free;
3. prefills up to ``prefill_chunk_tokens`` prompt tokens (padding counted) of admitted requests,
   span by span, so a long prompt never stalls the running streams for more than one span; a
   request whose prompt is done moves to its decode slot and its first token is chosen;
4. runs one decode step for every running request (a CUDA graph per batch-size bucket on a GPU);
5. hands out the tokens chosen by the *previous* step, with their text and, when asked,
   log-probabilities.

**Pipelining.** Tokens are chosen on the device and stay there: the next step reads them from the
token buffer, so the host never waits for a step before queueing the next one. Each step's choices
go to pinned host memory behind an event and are read one step later, while the device runs the
step just queued; the host's bookkeeping (stop checks, text, the HTTP side) overlaps the device's
work. The price is a wasted row-step or two when a request stops on a token the host has not seen
yet (a stop token or string); their output is dropped. A request is never run past ``max_tokens``: the
host counts the tokens it has queued.

**State.** A request's state lives in one row of a preallocated :class:`HybridCache`: a *decode
slot* while it generates, a row of a small *prefill* cache while its prompt is stored. Rows are
fixed regions, not paged blocks: in Hymba only the few global layers keep per-token K/V; the
sliding-window rings, conv inputs and SSM state are fixed-size whatever the length. A fixed
region therefore wastes only the unused tail of three layers' K/V (per slot, ``max_model_len``
minus the request's length), while blocks would make every decode-attention kernel follow a
block table. When prompts are done, their rows are copied into their decode slots in one go
(:meth:`HybridCache.copy_rows`); prefix states are kept and reused by row snapshots
(:meth:`HybridCache.snapshot_row` / :meth:`~HybridCache.restore_row`, :mod:`.prefix_cache`).

Decode slots are handed out lowest first, so the running requests sit at the front of the cache and
a step runs over the smallest bucket of rows that holds them all. Free rows inside that bucket
compute throwaway tokens; their lengths are put back after each step so they never run past the
cache, and a new request overwrites the whole row.

The engine is single-threaded: only one thread may call :meth:`add_request`, :meth:`abort` and
:meth:`step` (:class:`hymba.serving.async_engine.AsyncEngine` serialises an event loop's calls).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..inference.accounting import cache_bytes
from ..inference.cache import HybridCache, meta_prefix
from ..inference.step import DecodeGraph, decode_logits
from ..inference.text import TextStream
from ..model.layout import InputError
from .prefix_cache import PrefixCache
from .sampler import SlotSampler, TokenChoice, device_index

MAX_TOP_LOGPROBS = 20
# A prompt scored token by token (prompt_logprobs) needs the logits of every position of its span
# (vocab floats each): it is prefilled alone, in spans of at most this many tokens.
SCORING_SPAN_TOKENS = 2048


@dataclass
class _HostChoice:
    """A :class:`TokenChoice` on the host: one list per part."""

    tokens: list[int]
    logprobs: list[float] | None
    top_ids: list[list[int]] | None
    top_logprobs: list[list[float]] | None


class _InFlight:
    """Tokens chosen on the device for ``requests`` (row ``i`` for ``requests[i]``), on their way
    to the host: copied to pinned memory behind an event when queued, read by :meth:`read` a step
    later without waiting for anything queued since."""

    def __init__(self, requests: list[_Request], choice: TokenChoice,
                 timing: tuple[torch.cuda.Event, torch.cuda.Event] | None = None) -> None:
        self.requests, self.timing = requests, timing
        k = len(requests)
        self.top = 0 if choice.top_ids is None else choice.top_ids.shape[1]
        self.with_logprobs = choice.logprobs is not None
        parts = [choice.tokens[:, None]]
        if self.with_logprobs:
            parts.append(choice.logprobs[:, None])
        if self.top:
            parts += [choice.top_ids, choice.top_logprobs]
        flat = torch.cat([p.reshape(k, -1).double() for p in parts], 1)  # float64 holds token ids exactly
        self.event = None
        if flat.is_cuda:
            self.host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            self.host.copy_(flat, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = flat

    def read(self) -> _HostChoice:
        if self.event is not None:
            self.event.synchronize()
        rows = self.host.tolist()
        tokens = [int(r[0]) for r in rows]
        logprobs = [r[1] for r in rows] if self.with_logprobs else None
        col = 1 + self.with_logprobs
        top_ids = [[int(t) for t in r[col : col + self.top]] for r in rows] if self.top else None
        top_logprobs = [r[col + self.top :] for r in rows] if self.top else None
        return _HostChoice(tokens, logprobs, top_ids, top_logprobs)


class QueueFull(Exception):
    """The waiting queue is at its bound: the request is refused (HTTP 429)."""


@dataclass
class SamplingParams:
    """Per-request generation parameters (validated on creation, :class:`InputError`)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely
    prompt_logprobs: bool = False

    def __post_init__(self) -> None:
        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
            return float(value)

        integer("max_tokens", 0)
        integer("top_k", 0)
        if number("temperature") < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < number("top_p") <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if number("repetition_penalty") <= 0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if self.seed is not None:
            integer("seed", 0)
            if self.seed >= 2**64:
                raise InputError(f"seed must be below 2**64, got {self.seed}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if not all(isinstance(s, str) for s in self.stop):
            raise InputError("stop must be strings")
        self.stop_token_ids = tuple(self.stop_token_ids)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in self.stop_token_ids):
            raise InputError("stop_token_ids must be integers")
        if self.logprobs is not None:
            integer("logprobs", 0)
            if self.logprobs > MAX_TOP_LOGPROBS:
                raise InputError(f"logprobs must be at most {MAX_TOP_LOGPROBS}, got {self.logprobs}")
        if self.max_tokens == 0 and not self.prompt_logprobs:
            raise InputError("max_tokens must be >= 1 (0 only to score a prompt with prompt_logprobs)")


@dataclass
class EngineConfig:
    max_batch: int = 32  # decode slots
    max_model_len: int | None = None  # prompt + new tokens per request (default: the model's maximum)
    max_queue: int = 256  # waiting requests at most; more are refused (QueueFull)
    prefill_chunk_tokens: int = 8192  # prompt tokens prefilled per step, padding counted
    prefill_rows: int = 16  # requests whose prompts are being stored at once
    prefix_cache_bytes: int = 256 << 20  # budget of stored prefix states (0: off)
    cuda_graph: bool | None = None  # default: on for a CUDA model

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "prefill_chunk_tokens", "prefill_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            raise InputError(f"max_model_len must be an integer >= 2, got {self.max_model_len!r}")
        if not isinstance(self.prefix_cache_bytes, int) or self.prefix_cache_bytes < 0:
            raise InputError(f"prefix_cache_bytes must be an integer >= 0, got {self.prefix_cache_bytes!r}")


@dataclass
class LogProb:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    new_text: str
    logprobs: list[LogProb] | None
    prompt_logprobs: list[LogProb | None] | None
    finished: bool
    finish_reason: str | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    slot: int | None = None
    stage_row: int | None = None
    stored: int = 0  # prompt tokens stored in the prefill row
    split: int | None = None  # store a prefix snapshot once this many tokens are stored
    queued: int = 0  # new tokens chosen on the device so far (the host sees them a step later)
    prev_logits: Tensor | None = None  # last position's logits of the previous span (prompt logprobs)
    output: list[int] = field(default_factory=list)
    text: TextStream | None = None  # the output's text (None without a tokenizer)
    prompt_logprobs: list[LogProb | None] | None = None
    prompt_logprobs_sent: bool = False
    finish_reason: str | None = None
    error: str | None = None

    @property
    def length(self) -> int:
        """Tokens stored in the decode slot: the prompt and every queued new token but the last."""
        return len(self.prompt) + max(self.queued - 1, 0)

    @property
    def decodes(self) -> bool:
        """Whether a decode step should choose this request's next token."""
        return self.finish_reason is None and 0 < self.queued < self.params.max_tokens


class Engine:
    """Continuous batching for one model (see the module docstring)."""

    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        config = config or EngineConfig()
        mc = model.config
        self.max_model_len = config.max_model_len or mc.max_position_embeddings
        if self.max_model_len > mc.max_position_embeddings:
            raise InputError(f"max_model_len {self.max_model_len} exceeds the model's maximum of "
                             f"{mc.max_position_embeddings} tokens")
        self.config = config = dataclasses.replace(config, max_model_len=self.max_model_len)
        device = model.device
        self.use_graph = device.type == "cuda" if config.cuda_graph is None else bool(config.cuda_graph)
        if self.use_graph and device.type != "cuda":
            raise InputError("cuda_graph=True needs a model on a CUDA device")
        self.eos = set() if mc.eos_token_id is None else {mc.eos_token_id}
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            self.eos.add(tokenizer.eos_token_id)
        self.prefix = meta_prefix(model)
        self.slots = HybridCache(mc, config.max_batch, self.max_model_len, dtype=model.dtype, device=device,
                                 static_shapes=self.use_graph).reset(self.prefix)
        self.stage = HybridCache(mc, config.prefill_rows, self.max_model_len, dtype=model.dtype,
                                 device=device).reset(self.prefix)
        self.sampler = SlotSampler(config.max_batch, mc.vocab_size, device)
        self.prefix_cache = PrefixCache(config.prefix_cache_bytes)
        self.free_slots = list(range(config.max_batch))
        self.free_stage_rows = list(range(config.prefill_rows))
        self.waiting: deque[_Request] = deque()
        self.prefilling: list[_Request] = []
        self.decoding: dict[int, _Request] = {}  # slot -> request
        self.requests: dict[str, _Request] = {}
        self.aborted: list[_Request] = []
        self.active = torch.zeros(config.max_batch, dtype=torch.bool, device=device)
        self.tokens = torch.zeros(config.max_batch, dtype=torch.long, device=device)
        self.buckets = sorted({min(2 ** i, config.max_batch) for i in range(config.max_batch.bit_length() + 1)})
        self.views: dict[int, HybridCache] = {}
        self.stage_views: dict[tuple[int, int], HybridCache] = {}
        self.graphs: dict[int, DecodeGraph] = {}
        self.in_flight: list[_InFlight] = []  # queued by the last step, read by the next
        self._rows_index: tuple[tuple[int, ...], Tensor] | None = None  # the last decode rows, on the device
        self._ids = itertools.count()
        self.slot_bytes = self.slots.nbytes()["total"] // config.max_batch
        self.stage_bytes = self.stage.nbytes()["total"] // config.prefill_rows
        self.counters = dict(tokens_generated_total=0, prompt_tokens_total=0, steps_total=0,
                             prefill_steps_total=0, prefill_padded_tokens_total=0, decode_steps_total=0,
                             decode_bytes_total=0, requests_finished_total=0, requests_aborted_total=0, requests_failed_total=0)
        # host seconds spent queueing prefills / decode steps and reading chosen tokens (the
        # wait for the device included): where a step's time goes
        self.timers = dict(prefill_s=0.0, decode_s=0.0, collect_s=0.0)
        # on a GPU: device seconds of the decode steps (CUDA events around each) and the bytes those
        # steps had to move at least (weights, every running request's state read once: its K/V
        # and occupied sliding-window slots, conv and SSM state, the latter two written back):
        # their ratio over the copy bandwidth is the decode roofline
        self.device_decode_s = 0.0
        one = cache_bytes(mc, 1, dtype_bytes=model.dtype.itemsize,
                          ssm_dtype_bytes=next(iter(self.slots.ssm.values())).dtype.itemsize
                          if self.slots.ssm else None)
        self._bytes_fixed = sum(p.numel() * p.element_size() for p in model.parameters()) + one["meta_kv"]
        self._bytes_row = 2 * (one["ssm_state"] + one["conv_state"])
        self._bytes_token = one["global_kv"]  # per stored token
        self._ring = (mc.sliding_window or 0) + 1  # sliding-window slots: only the occupied ones count
        self._bytes_ring_slot = (one["swa_kv"] + one["swa_positions"]) // self._ring

    # ------------------------------------------------------------------------------------
    # The public interface
    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> str:
        """Queue a request; returns its id. Raises InputError or QueueFull; never blocks."""
        if not isinstance(params, SamplingParams):
            raise InputError("params must be a SamplingParams")
        prompt = list(prompt_ids)
        if not prompt:
            raise InputError("the prompt is empty: give at least one token")
        vocab = self.model.config.vocab_size
        for t in prompt:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                raise InputError(f"token id {t!r} is outside the vocabulary [0, {vocab})")
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise InputError(f"prompt of {len(prompt)} tokens + max_tokens={params.max_tokens} exceeds the "
                             f"maximum of {self.max_model_len} tokens per request (max_model_len)")
        if params.stop and self.tokenizer is None:
            raise InputError("stop strings need an engine with a tokenizer")
        if len(self.waiting) >= self.config.max_queue:
            raise QueueFull(f"{len(self.waiting)} requests are waiting (the bound is {self.config.max_queue})")
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        if request_id in self.requests:
            raise InputError(f"request id {request_id!r} is already in use")
        request = _Request(request_id, prompt, params)
        if self.tokenizer is not None:
            request.text = TextStream(self.tokenizer, params.stop)
        self.requests[request_id] = request
        self.waiting.append(request)
        return request_id

    def abort(self, request_id: str) -> None:
        """End a request now and free its state; the next :meth:`step` reports it."""
        request = self.requests.get(str(request_id))
        if request is None or request.finish_reason is not None:
            return
        self._release(request)
        request.finish_reason = "abort"
        self.aborted.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        """One scheduler iteration; see the module docstring."""
        outputs = [self._finish(r) for r in self.aborted]
        self.aborted = []
        self._admit()
        queued: list[_InFlight] = []
        with torch.no_grad():
            t0 = time.perf_counter()
            outputs += self._prefill(queued)
            t1 = time.perf_counter()
            outputs += self._decode(queued)
            t2 = time.perf_counter()
            # the previous step's tokens, read while the device runs what was just queued
            previous, self.in_flight = self.in_flight, queued
            outputs += self._collect(previous)
            t3 = time.perf_counter()
        self.timers["prefill_s"] += t1 - t0
        self.timers["decode_s"] += t2 - t1
        self.timers["collect_s"] += t3 - t2
        self.counters["steps_total"] += 1
        return outputs

    def stats(self) -> dict:
        """Counts for monitoring (the HTTP server's /metrics)."""
        return {
            "running": len(self.decoding) + len(self.prefilling),
            "waiting": len(self.waiting),
            "slots_total": self.config.max_batch,
            "slots_used": self.config.max_batch - len(self.free_slots),
            "state_bytes_in_use": (self.config.max_batch - len(self.free_slots)) * self.slot_bytes
            + (self.config.prefill_rows - len(self.free_stage_rows)) * self.stage_bytes,
            "prefix_hits": self.prefix_cache.hits,
            "prefix_misses": self.prefix_cache.misses,
            "prefix_bytes": self.prefix_cache.bytes,
            "prefix_entries": len(self.prefix_cache.entries),
            **self.counters,
            **{f"host_{name}": round(value, 6) for name, value in self.timers.items()},
            "device_decode_s": round(self.device_decode_s, 6),
        }

    def warmup(self) -> None:
        """Capture the decode step of every batch bucket now (with CUDA graphs; else nothing), so
        that no request waits for a capture later. Only while no request holds a slot."""
        if not self.use_graph or len(self.free_slots) != self.config.max_batch:
            return
        with torch.no_grad():
            for k in self.buckets:
                if k in self.graphs:
                    continue
                view = self.views.get(k) or self.views.setdefault(k, self.slots.rows(0, k))
                view.set_extent(0)
                self.graphs[k] = DecodeGraph(self.model, view)
                self.graphs[k](self.tokens[:k])  # runs one step eagerly and captures it
            self.slots.lengths.fill_(self.slots.num_meta)  # the free rows start over (see _decode)
            self.slots.set_extent(0)

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
        """Run ``prompts`` to completion; each one's new tokens (a stop token included)."""
        many = params if isinstance(params, list) else [params] * len(prompts)
        ids = [self.add_request(p, q) for p, q in zip(prompts, many)]
        tokens: dict[str, list[int]] = {i: [] for i in ids}
        while any(i in self.requests for i in ids):
            for out in self.step():
                if out.request_id in tokens:
                    tokens[out.request_id] += out.new_token_ids
                    if out.finish_reason == "error":
                        raise RuntimeError(f"request {out.request_id} failed: {out.error}")
        return [tokens[i] for i in ids]

    # ------------------------------------------------------------------------------------
    # Scheduling
    def _admit(self) -> None:
        fresh = []  # prefill rows that start after the meta tokens
        while self.waiting and self.free_slots and self.free_stage_rows:
            request = self.waiting.popleft()
            request.slot = heapq.heappop(self.free_slots)
            request.stage_row = heapq.heappop(self.free_stage_rows)
            row = request.stage_row
            snap = None if request.params.prompt_logprobs else self.prefix_cache.lookup(request.prompt)
            if snap is None:
                fresh.append(row)
            else:
                if row in fresh:  # freed above by a request that failed (below): no reset after this
                    fresh.remove(row)
                self.stage.restore_row(row, snap)
            request.stored = 0 if snap is None else snap.num_tokens
            if not request.params.prompt_logprobs:
                request.split = self.prefix_cache.shared_prefix(request.prompt, request.stored)
            self.prefilling.append(request)
            try:
                self.sampler.set_row(request.slot, request.params, request.prompt)
            except Exception as exc:  # noqa: BLE001 - a parameter the sampler cannot take fails its request alone
                self.aborted.append(self._failed(request, exc))
        if fresh:
            self.stage.reset_rows(device_index(fresh, self.stage.lengths.device), self.prefix)

    def _plan(self) -> tuple[list[list], int, int, int]:
        """Which prompts get how many tokens this step: ``([request, start, end], ...), lo, hi,
        extent``. The forward runs over prefill rows ``lo:hi``, every row padded to the widest span,
        so ``(hi - lo) x width`` tokens are computed; that stays within ``prefill_chunk_tokens``.
        Of the first ``n`` admitted prompts (first come, first served; the first always takes
        part) the ``n`` that stores the most real tokens wins. A prompt to score
        (``prompt_logprobs``) goes alone, in spans of :data:`SCORING_SPAN_TOKENS` at most."""
        budget = self.config.prefill_chunk_tokens
        wanted = []
        for request in self.prefilling:
            if request.params.prompt_logprobs:
                if not wanted:
                    wanted.append((request, request.stored, len(request.prompt)))
                    budget = min(budget, SCORING_SPAN_TOKENS)
                break
            end = len(request.prompt)
            if request.split is not None and request.stored < request.split:
                end = request.split
            wanted.append((request, request.stored, end))
        best = None
        for n in range(1, len(wanted) + 1):
            rows = [r.stage_row for r, _, _ in wanted[:n]]
            lo, hi = min(rows), max(rows) + 1
            # a row stores all `width` columns from its length on (its padding too, where nothing
            # reads it): the span is capped by the fullest row in lo:hi, waiting prompts included
            extent = max(r.stored for r in self.prefilling if lo <= r.stage_row < hi)
            width = min(max(end - start for _, start, end in wanted[:n]), budget // (hi - lo),
                        self.max_model_len - extent)
            if width < 1:
                break
            real = sum(min(end - start, width) for _, start, end in wanted[:n])
            if best is None or real > best[0]:
                best = (real, n, width, lo, hi, extent)
        if best is None:
            return [], 0, 0, 0
        _, n, width, lo, hi, extent = best
        return [[r, start, min(end, start + width)] for r, start, end in wanted[:n]], lo, hi, extent

    def _prefill(self, queued: list[_InFlight]) -> list[RequestOutput]:
        """Store the next span of admitted prompts (:meth:`_plan`) in one forward over the
        prefill rows, right-padded; prompts that are done move to their decode slots."""
        plan, lo, hi, extent = self._plan()
        if not plan:
            return []
        width = max(end - start for _, start, end in plan)
        ids = torch.zeros(hi - lo, width, dtype=torch.long)
        counts = torch.zeros(hi - lo, dtype=torch.long)
        for request, start, end in plan:
            ids[request.stage_row - lo, : end - start] = torch.tensor(request.prompt[start:end])
            counts[request.stage_row - lo] = end - start
        view = self.stage_views.get((lo, hi))
        if view is None:
            view = self.stage_views[lo, hi] = self.stage.rows(lo, hi)
        view.set_extent(extent)
        full = len(plan) == hi - lo and all(end - start == width for _, start, end in plan)
        device = self.model.device
        scoring = any(r.params.prompt_logprobs for r, _, _ in plan)
        self.counters["prefill_steps_total"] += 1
        self.counters["prefill_padded_tokens_total"] += (hi - lo) * width
        try:
            logits = self.model(ids.to(device, non_blocking=True), state=view,
                                num_new=None if full else counts.to(device, non_blocking=True),
                                check_inputs=False, logits_to_keep=0 if scoring else 1).logits
        except Exception as exc:  # the prefill step failed: the requests in it fail
            return [self._fail(r, exc) for r, _, _ in plan]
        outputs, done = [], []
        for request, start, end in plan:
            row = request.stage_row
            try:
                at = row - lo
                last = logits[at, end - start - 1] if scoring else logits[at, 0]
                if request.params.prompt_logprobs:
                    self._score_prompt(request, start, end, logits[at, : end - start])
                self.counters["prompt_tokens_total"] += end - start
                request.stored = end
                if request.split == end:
                    self.prefix_cache.store(request.prompt[:end], self.stage.snapshot_row(row, end))
                if end == len(request.prompt):
                    done.append((request, last))
            except Exception as exc:  # noqa: BLE001 - this request alone fails
                outputs.append(self._fail(request, exc))
        if done:
            outputs += self._start_decoding(done, queued)
        return outputs

    def _score_prompt(self, request: _Request, start: int, end: int, logits: Tensor) -> None:
        """Log-probabilities of prompt tokens ``start:end`` (the first token of the prompt has none)."""
        if request.prompt_logprobs is None:
            request.prompt_logprobs = [None]
        # position j's logits predict token j + 1: the span's first token comes from the last span
        rows = logits[:-1] if request.prev_logits is None else torch.cat([request.prev_logits[None], logits[:-1]])
        targets = request.prompt[start + (request.prev_logits is None) : end]
        if targets:
            k = request.params.logprobs or 0
            request.prompt_logprobs += _logprobs(rows, torch.tensor(targets, device=rows.device), k)
        # a copy: a view would keep the whole step's logits alive
        request.prev_logits = None if end == len(request.prompt) else logits[-1].clone()

    def _start_decoding(self, done: list[tuple[_Request, Tensor]], queued: list[_InFlight]) -> list[RequestOutput]:
        """These prompts are stored: move them to their decode slots (one copy for all) and
        choose their first tokens (on the device: they are read with the next step's)."""
        device = self.tokens.device
        outputs = []
        for request, _ in done:
            self.prefilling.remove(request)
        scored = [(r, lg) for r, lg in done if r.params.max_tokens == 0]  # prompts to score only
        for request, _ in scored:
            request.finish_reason = "length"
            self._release(request)
            outputs.append(self._finish(request))
        starting = [(r, lg) for r, lg in done if r.params.max_tokens > 0]
        if not starting:
            return outputs
        requests = [r for r, _ in starting]
        slots = [r.slot for r in requests]
        source = device_index([r.stage_row for r in requests], device)
        index = device_index(slots, device)
        try:
            self.slots.copy_rows(self.stage, source, index, max(len(r.prompt) for r in requests))
            logits = torch.stack([lg for _, lg in starting]).float()
            want = [r.params.logprobs for r in requests if r.params.logprobs is not None]
            choice = self.sampler.choose(logits, slots, max(want) if want else None, index=index)
            self.tokens.index_copy_(0, index, choice.tokens)
            more = [r.slot for r in requests if r.params.max_tokens > 1]
            if more:
                self.active.index_fill_(0, device_index(more, device), True)
        except Exception as exc:  # moving or sampling failed: these requests fail
            return outputs + [self._fail(r, exc) for r in requests]
        self.stage.lengths.index_fill_(0, source, self.stage.num_meta)  # see _plan
        for request in requests:
            heapq.heappush(self.free_stage_rows, request.stage_row)
            request.stage_row = None
            request.queued = 1
            self.decoding[request.slot] = request
        queued.append(_InFlight(requests, choice))
        return outputs

    def _decode(self, queued: list[_InFlight]) -> list[RequestOutput]:
        """Queue one decode step for every request that needs another token."""
        requests = [r for r in self.decoding.values() if r.decodes]
        if not requests:
            return []
        requests.sort(key=lambda r: r.slot)
        rows = tuple(r.slot for r in requests)
        k = next(b for b in self.buckets if b > rows[-1])
        view = self.views.get(k)
        if view is None:
            view = self.views[k] = self.slots.rows(0, k)
        if self._rows_index is None or self._rows_index[0] != rows:
            self._rows_index = (rows, device_index(rows, self.tokens.device))
        index = self._rows_index[1]
        view.set_extent(max(r.length for r in requests))
        self.counters["decode_steps_total"] += 1
        self.counters["decode_bytes_total"] += (
            self._bytes_fixed + len(requests) * self._bytes_row
            + sum(r.length + 1 for r in requests) * self._bytes_token
            + sum(min(r.length + 1, self._ring) for r in requests) * self._bytes_ring_slot)
        timing = None
        if self.tokens.is_cuda:
            timing = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            timing[0].record()
        try:
            if self.use_graph:
                graph = self.graphs.get(k)
                if graph is None:
                    graph = self.graphs[k] = DecodeGraph(self.model, view)
                logits = graph(self.tokens[:k])
            else:
                logits = decode_logits(self.model, self.tokens[:k], view)
            # rows without a running request computed a throwaway token: put their lengths back
            lengths = view.lengths
            lengths.copy_(torch.where(self.active[:k], lengths, self.slots.num_meta))
            want = [r.params.logprobs for r in requests if r.params.logprobs is not None]
            choice = self.sampler.choose(logits.index_select(0, index), list(rows), max(want) if want else None,
                                         index=index)
            self.tokens.index_copy_(0, index, choice.tokens)
            if timing is not None:
                timing[1].record()
        except Exception as exc:  # the batch step failed: every request in it fails
            return [self._fail(r, exc) for r in requests]
        last = []
        for request in requests:
            request.queued += 1
            if request.queued == request.params.max_tokens:
                last.append(request.slot)
        if last:  # their last token is chosen: their rows run no more steps
            self.active.index_fill_(0, device_index(last, self.active.device), False)
        queued.append(_InFlight(requests, choice, timing))
        return []

    def _collect(self, in_flight: list[_InFlight]) -> list[RequestOutput]:
        """Hand out the tokens of an earlier step; a request that has ended since (a stop token,
        an abort) drops what was chosen for it afterwards."""
        outputs = []
        for batch in in_flight:
            try:
                choice = batch.read()
            except Exception as exc:  # noqa: BLE001 - the step behind these tokens failed
                outputs += [self._fail(r, exc) for r in batch.requests if self._live(r)]
                continue
            if batch.timing is not None:  # read after the step: both events have happened
                self.device_decode_s += batch.timing[0].elapsed_time(batch.timing[1]) / 1000
            outputs += [self._take(r, choice, i) for i, r in enumerate(batch.requests) if self._live(r)]
        return outputs

    def _live(self, request: _Request) -> bool:
        return request.finish_reason is None and self.requests.get(request.id) is request

    # ------------------------------------------------------------------------------------
    # Per-request bookkeeping
    def _take(self, request: _Request, choice: _HostChoice, i: int) -> RequestOutput:
        """Give ``request`` its new token (row ``i`` of ``choice``); end it if it stops."""
        try:
            token = choice.tokens[i]
            request.output.append(token)
            self.counters["tokens_generated_total"] += 1
            logprobs = None
            if request.params.logprobs is not None:
                n = request.params.logprobs
                top = list(zip(choice.top_ids[i][:n], choice.top_logprobs[i][:n])) if n else []
                logprobs = [LogProb(token, choice.logprobs[i], top)]
            params = request.params
            if (token in self.eos and not params.ignore_eos) or token in params.stop_token_ids:
                request.finish_reason = "stop"  # the stop token's text is not shown
                text, _ = self._visible(request, final=True)
            else:
                self._feed_text(request, token)
                last = len(request.output) >= params.max_tokens
                text, hit = self._visible(request, final=last)
                if hit:
                    request.finish_reason = "stop"
                elif last:
                    request.finish_reason = "length"
            out = self._output(request, [token], text, logprobs)
            if request.finish_reason is not None:
                self._release(request)
                out.finished = True
                out.finish_reason = request.finish_reason
                self._forget(request)
            return out
        except Exception as exc:  # noqa: BLE001 - one request's failure must not end the batch
            return self._fail(request, exc)

    def _feed_text(self, request: _Request, token: int) -> None:
        """Extend the request's text by ``token``."""
        if request.text is not None:
            request.text.push(token)

    def _visible(self, request: _Request, final: bool) -> tuple[str, bool]:
        """The text that became safe to show and whether a stop string was reached
        (:meth:`TextStream.visible`); none without a tokenizer."""
        return ("", False) if request.text is None else request.text.visible(final)

    def _output(self, request: _Request, tokens: list[int], text: str, logprobs) -> RequestOutput:
        first = request.prompt_logprobs is not None and not request.prompt_logprobs_sent
        request.prompt_logprobs_sent = request.prompt_logprobs is not None
        return RequestOutput(
            request_id=request.id, new_token_ids=tokens, new_text=text, logprobs=logprobs,
            prompt_logprobs=request.prompt_logprobs if first else None, finished=False, finish_reason=None,
            error=request.error, prompt_tokens=len(request.prompt), completion_tokens=len(request.output),
        )

    def _finish(self, request: _Request) -> RequestOutput:
        out = self._output(request, [], "", None)
        out.finished, out.finish_reason = True, request.finish_reason
        self._forget(request)
        return out

    def _failed(self, request: _Request, exc: BaseException) -> _Request:
        """End ``request`` as failed now; its output is reported with the next step's."""
        self._release(request)
        request.finish_reason = "error"
        request.error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return request

    def _fail(self, request: _Request, exc: BaseException) -> RequestOutput:
        self._release(request)
        request.finish_reason = "error"
        request.error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return self._finish(request)

    def _release(self, request: _Request) -> None:
        """Free everything the request holds (its slot, its prefill row, its queue place)."""
        if request in self.waiting:
            self.waiting.remove(request)
        if request in self.prefilling:
            self.prefilling.remove(request)
        if request.stage_row is not None:
            # (t[i].fill_(v), not t[i] = v: in this torch a scalar assigned to a CUDA tensor's
            # element or indexed rows is a synchronous copy from the host)
            self.stage.lengths[request.stage_row].fill_(self.stage.num_meta)  # see _plan
            heapq.heappush(self.free_stage_rows, request.stage_row)
            request.stage_row = None
        if request.slot is not None:
            self.decoding.pop(request.slot, None)
            self.active[request.slot].fill_(False)
            self.slots.lengths[request.slot].fill_(self.slots.num_meta)
            heapq.heappush(self.free_slots, request.slot)
            request.slot = None

    def _forget(self, request: _Request) -> None:
        if self.requests.pop(request.id, None) is None:
            return
        key = {"abort": "requests_aborted_total", "error": "requests_failed_total"}.get(
            request.finish_reason, "requests_finished_total")
        self.counters[key] += 1


def _logprobs(logits: Tensor, targets: Tensor, k: int) -> list[LogProb]:
    """Log-probabilities of ``targets`` (n,) under ``logits`` (n, V), with the k most likely."""
    logp = logits.float().log_softmax(-1)
    chosen = logp.gather(-1, targets[:, None])[:, 0].tolist()
    if k:
        top = logp.topk(k, dim=-1)
        pairs = [list(zip(i, v)) for i, v in zip(top.indices.tolist(), top.values.tolist())]
    else:
        pairs = [[] for _ in chosen]
    return [LogProb(t, c, p) for t, c, p in zip(targets.tolist(), chosen, pairs)]

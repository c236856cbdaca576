"""Text generation: a pieced prefill of the prompts, then one token at a time through the cache.

``input_ids`` may be left-padded with an ``attention_mask`` (1 = real token), the convention for
decoder-only batching. Inside, every row is packed to the front (``[tokens][padding]``) so that all
rows share positions: padding then comes after each row's tokens, where a causal model never
sees it, and it leaves the conv/SSM state untouched. Each row therefore yields exactly what it
yields alone.

A decode step does not wait for the device: whether every row has finished is read from a copy
made a step or two earlier (:class:`_DoneFlag`), so the host queues the next step while the GPU
runs this one. Only stop strings, which need the text, read each step's tokens.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.layout import InputError, check_token_ids, left_padding
from .cache import HybridCache, SWADecode, meta_prefix, params_key
from .prefill import prefill
from .sampling import SamplingConfig
from .step import DecodeGraph, decode_logits
from .text import TextStream


@dataclass(frozen=True)
class GenerationOptions:
    """The options of :func:`generate` and :func:`stream` (one set for both).

    ``max_new_tokens``: new tokens per row at most. ``do_sample``/``temperature``/``top_k``
    (0 = off)/``top_p`` (1 = off)/``repetition_penalty``/``seed``: see :class:`SamplingConfig`.
    ``eos_token_id``: stop tokens (default: the tokenizer's in :func:`stream`, the config's in
    :func:`generate`; ``[]`` disables them). ``pad_token_id``: what finished rows receive
    (default: the config's). ``stop_strings``: a row stops once its text contains one (needs a
    tokenizer). ``swa_decode``: see :class:`HybridCache`. ``cuda_graph`` (default: on for a CUDA
    model): replay each decode step as a captured CUDA graph. ``prefill_chunk_tokens``: prompt
    tokens per prefill piece (default: from the free GPU memory; see :mod:`.prefill`).
    """

    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    eos_token_id: int | Sequence[int] | None = None
    pad_token_id: int | None = None
    stop_strings: Sequence[str] | None = None
    swa_decode: SWADecode = "trained"
    cuda_graph: bool | None = None
    prefill_chunk_tokens: int | None = None

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InputError(f"max_new_tokens must be a positive integer, got {n!r}")
        if self.swa_decode not in ("trained", "reference"):
            raise InputError(f"swa_decode must be 'trained' or 'reference', got {self.swa_decode!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not -(2**63) <= self.seed < 2**64):
            raise InputError(f"seed must be an integer in [-2**63, 2**64), got {self.seed!r}")
        chunk = self.prefill_chunk_tokens
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise InputError(f"prefill_chunk_tokens must be a positive integer, got {chunk!r}")
        if isinstance(self.stop_strings, str):
            raise InputError("stop_strings must be a list of strings, not one string")
        _ = self.sampling  # builds (and so validates) the sampling options

    @classmethod
    def from_kwargs(cls, **kwargs) -> GenerationOptions:
        """Options from keyword arguments; an unknown name is an :class:`InputError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InputError(f"unknown generation option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**kwargs)

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            do_sample=bool(self.do_sample), temperature=self.temperature,
            top_k=0 if self.top_k is None else self.top_k, top_p=1.0 if self.top_p is None else self.top_p,
            repetition_penalty=self.repetition_penalty,
        )


@dataclass
class GenerationOutput:
    sequences: Tensor  # (b, n + T): the input followed by the new tokens (pad after a row stops)
    logits: Tensor  # (b, T, vocab) float32: the raw logits each new token was chosen from
    num_new: Tensor  # (b,) new tokens per row before it stopped (its stop token included)


def pack_prompts(model, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Validate prompts and move each row's real tokens to the front.

    Returns ``(packed ids (b, L), real tokens per row (b,) or None if no row is padded)``.
    """
    if isinstance(input_ids, Tensor) and input_ids.dim() == 2 and input_ids.numel() == 0:
        raise InputError("the prompt is empty: give at least one token")
    left_padding(attention_mask, input_ids) if isinstance(input_ids, Tensor) else None  # the mask's form
    mask = None if attention_mask is None else attention_mask.bool()
    check_token_ids(input_ids, model.config.vocab_size, mask)
    if mask is None:
        return input_ids.long(), None
    length = input_ids.shape[1]
    starts = (~mask).long().cumprod(-1).sum(-1)
    counts = mask.long().sum(-1)
    index = (starts[:, None] + torch.arange(length, device=input_ids.device)).clamp(max=length - 1)
    packed = torch.gather(input_ids, 1, index)
    packed = torch.where(torch.arange(length, device=packed.device) < counts[:, None], packed, 0)
    padded = bool((counts != length).any())
    return packed.long(), (counts if padded else None)


class _DoneFlag:
    """Whether every row is done, read without waiting for the device: on CUDA each step copies
    the flag to pinned host memory behind an event, and :meth:`all_done` answers from the newest
    copy that has arrived (so a loop may run a step or two past the last row's end; those steps
    only give padding)."""

    def __init__(self, done: Tensor) -> None:
        self.done = done
        self.cuda = done.is_cuda
        if self.cuda:
            self.host = torch.zeros((), dtype=torch.bool, pin_memory=True)
            self.event = torch.cuda.Event()

    def all_done(self) -> bool:
        if not self.cuda:
            return bool(self.done.all())
        arrived = self.event.query()
        seen = arrived and bool(self.host)
        self.host.copy_(self.done.all(), non_blocking=True)
        self.event.record()
        return seen


# model -> (key, DecodeGraph, the MetaPrefix it reads): the captured step of a model's last
# CUDA-graph loop, kept for the next loop of the same shape; a loop takes it out while it runs, so
# concurrent loops never share it
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class DecodeLoop:
    """Prefill once, then yield one step at a time: ``(tokens (b,), raw logits (b, V))``.

    Rows that finished (EOS, or marked in :attr:`done` by the caller, e.g. for a stop string)
    receive ``pad_token_id``; iteration ends after ``max_new_tokens`` steps or soon after every
    row is done. The logits are only valid until the next step (a CUDA graph reuses its buffer):
    clone them to keep them. :attr:`num_new` counts each row's new tokens (its stop token
    included), on the device.
    """

    def __init__(self, model, input_ids: Tensor, attention_mask: Tensor | None = None,
                 options: GenerationOptions = GenerationOptions()) -> None:
        config = model.config
        self.model, self.options = model, options
        self.sampling = options.sampling
        self.max_new_tokens = options.max_new_tokens
        self.packed, self.counts = pack_prompts(model, input_ids, attention_mask)
        longest = self.packed.shape[1]
        limit = config.max_position_embeddings
        if longest + self.max_new_tokens > limit:
            raise InputError(
                f"prompt of {longest} tokens + max_new_tokens={self.max_new_tokens} exceeds the model's "
                f"maximum of {limit} tokens (max_position_embeddings)"
            )
        eos = config.eos_token_id if options.eos_token_id is None else options.eos_token_id
        eos_list = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        device = model.device
        self.eos = torch.tensor(eos_list, dtype=torch.long, device=device)
        pad = options.pad_token_id if options.pad_token_id is not None else config.pad_token_id
        self.pad = 0 if pad is None else int(pad)
        use_graph = device.type == "cuda" if options.cuda_graph is None else bool(options.cuda_graph)
        if use_graph and device.type != "cuda":
            raise InputError("cuda_graph=True needs a model on a CUDA device")
        self._graph_key, kept = None, None
        needed = longest + self.max_new_tokens
        if use_graph:
            self._graph_key = (self.packed.shape[0], options.swa_decode, params_key(model))
            kept = _GRAPHS.pop(model, None)  # a loop of another shape drops it before allocating
        self.graph: DecodeGraph | None = None
        # a kept step serves any loop of its batch size whose tokens fit its cache (a step attends
        # over the stored tokens only, however large the cache). It reads the meta prefix's
        # tensors: a prefix recomputed since (weights changed, then changed back to the same key)
        # has new ones, so the step is captured again
        if (kept is not None and kept[0] == self._graph_key and kept[1].cache.max_tokens >= needed
                and kept[2] is meta_prefix(model)):
            self.graph = kept[1]
            self.cache = self.graph.cache
        else:
            del kept
            self.cache = HybridCache(
                config, self.packed.shape[0], needed, dtype=model.dtype,
                device=device, swa_decode=options.swa_decode, static_shapes=use_graph,
            )
            if use_graph:
                self.graph = DecodeGraph(model, self.cache)
        self.generator = None
        if self.sampling.do_sample:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(torch.seed() if options.seed is None else options.seed)
        b = self.packed.shape[0]
        self.done = torch.zeros(b, dtype=torch.bool, device=device)
        self.num_new = torch.zeros(b, dtype=torch.long, device=device)

    @torch.no_grad()
    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        model, packed = self.model, self.packed.to(self.model.device)
        self.cache.reset(meta_prefix(model))
        counts = None if self.counts is None else self.counts.to(packed.device)
        logits = prefill(model, self.cache, packed, counts, self.options.prefill_chunk_tokens)
        seen = None
        if self.sampling.repetition_penalty != 1.0:
            valid = torch.ones_like(packed, dtype=torch.bool) if counts is None else (
                torch.arange(packed.shape[1], device=packed.device) < counts[:, None])
            seen = torch.zeros(packed.shape[0], model.config.vocab_size, dtype=torch.bool, device=packed.device)
            seen.scatter_(1, torch.where(valid, packed, packed[:, :1]), True)
        try:
            yield from self._decode(logits, seen)
        finally:
            if self.graph is not None and self.graph.graph is not None:
                _GRAPHS[model] = (self._graph_key, self.graph, meta_prefix(model))

    def _decode(self, logits: Tensor, seen: Tensor | None) -> Iterator[tuple[Tensor, Tensor]]:
        flag = _DoneFlag(self.done)
        for step in range(self.max_new_tokens):
            tokens = self.sampling.pick(self.sampling.scores(logits, seen), self.generator)
            tokens = torch.where(self.done, self.pad, tokens)
            self.num_new += ~self.done
            yield tokens, logits
            self.done |= torch.isin(tokens, self.eos)
            if step + 1 == self.max_new_tokens or flag.all_done():
                return
            if seen is not None:
                seen.scatter_(1, tokens[:, None], True)
            if self.graph is not None:
                logits = self.graph(tokens)
            else:
                logits = decode_logits(self.model, tokens, self.cache)


class _StopStrings:
    """Marks rows whose generated text contains a stop string (decodes only a short tail)."""

    def __init__(self, tokenizer, stops: Sequence[str]) -> None:
        if tokenizer is None:
            raise InputError("stop strings need a tokenizer (pass tokenizer=...)")
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.tail = 4 * max(len(s) for s in self.stops) + 4 if self.stops else 0

    def hit(self, tokens: list[int]) -> bool:
        text = self.tokenizer.decode(tokens[-self.tail :], skip_special_tokens=False)
        return any(s in text for s in self.stops)


def generate(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    tokenizer=None,
    output_logits: bool = False,
    **options,
) -> Tensor | GenerationOutput:
    """Continue each prompt; returns the input followed by the new tokens, a LongTensor (b, n+T).

    ``attention_mask`` marks real tokens of a left-padded batch. ``options`` are those of
    :class:`GenerationOptions` (``max_new_tokens``, sampling, ``eos_token_id`` (default: the
    config's), ``pad_token_id``, ``stop_strings`` (needs ``tokenizer``), ``swa_decode``,
    ``cuda_graph``, ``prefill_chunk_tokens``). A row stops after ``max_new_tokens``, at a stop
    token, or once its text contains a stop string; later positions hold ``pad_token_id``. With
    ``output_logits`` a :class:`GenerationOutput` also carries the step logits (kept only then).
    A captured CUDA-graph step and its cache stay with the model for the next call of the same
    batch size whose prompt and new tokens fit that cache.
    """
    opts = GenerationOptions.from_kwargs(**options)
    run = DecodeLoop(model, input_ids, attention_mask, opts)
    stops = _StopStrings(tokenizer, opts.stop_strings) if opts.stop_strings else None
    new: list[Tensor] = []
    logits: list[Tensor] = []
    rows: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    for tokens, step_logits in run:
        new.append(tokens)
        if output_logits:
            logits.append(step_logits.clone())
        if stops is not None:  # stop strings need the text: read this step's tokens
            done = run.done.tolist()
            for i, token in enumerate(tokens.tolist()):
                if not done[i]:
                    rows[i].append(token)
                    if stops.hit(rows[i]):
                        run.done[i] = True
    sequences = torch.cat([input_ids.to(new[0].device).long(), torch.stack(new, 1)], 1)
    if not output_logits:
        return sequences
    return GenerationOutput(sequences, torch.stack(logits, 1), run.num_new.cpu())


def stream(model, tokenizer, prompt: str | Sequence[int], **options) -> Iterator[str]:
    """Generate for one prompt (text or ids) and yield the new text piece by piece.

    ``options`` are those of :class:`GenerationOptions` (``max_new_tokens`` defaults to 256
    here; ``eos_token_id`` to the tokenizer's). Stops at a stop token or before the first stop
    string. Text is held back while it could still become a stop string or ends in an incomplete
    character.
    """
    options.setdefault("max_new_tokens", 256)
    if options.get("eos_token_id") is None:
        eos = tokenizer.eos_token_id
        options["eos_token_id"] = [] if eos is None else eos
    opts = GenerationOptions.from_kwargs(**options)
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise InputError("the prompt is empty: give at least one token")
    eos = opts.eos_token_id
    eos_set = {eos} if isinstance(eos, int) else set(eos)
    run = DecodeLoop(model, torch.tensor([ids], device=model.device), options=opts)
    text = TextStream(tokenizer, opts.stop_strings or ())
    for tokens, _ in run:
        token = int(tokens[0])
        if token in eos_set:
            break
        text.push(token)
        piece, stopped = text.visible()
        if piece:
            yield piece
        if stopped:
            return
    piece, _ = text.visible(final=True)
    if piece:
        yield piece



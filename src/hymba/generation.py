"""Text generation: one prefill forward, then one token at a time through the hybrid cache.

``input_ids`` may be left-padded with an ``attention_mask`` (1 = real token), the convention for
decoder-only batching. Inside, every row is packed to the front (``[tokens][padding]``) so that all
rows share positions: padding then comes after each row's tokens, where a causal model never
sees it, and it leaves the conv/SSM state untouched. Each row therefore yields exactly what it
yields alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .cache import HybridCache, SWADecode, _params_key, meta_prefix
from .model.layout import InputError, left_padding


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. Greedy unless ``do_sample``; ``top_k=0`` and ``top_p=1``
    disable those filters; ``repetition_penalty`` (HF/CTRL style) applies in both modes."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
            return float(value)

        if number("temperature") <= 0:
            raise InputError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0 < number("top_p") <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if number("repetition_penalty") <= 0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")

    def scores(self, logits: Tensor, seen: Tensor | None) -> Tensor:
        """Processed next-token scores (b, V) from raw logits; -inf marks excluded tokens."""
        if seen is not None and self.repetition_penalty != 1.0:
            p = self.repetition_penalty
            logits = torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)
        if not self.do_sample:
            return logits
        logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            order = torch.sort(logits, dim=-1, descending=True)
            probs = order.values.softmax(-1)
            # drop a token once the more likely ones already reach top_p (always keep the first)
            drop = probs.cumsum(-1) - probs >= self.top_p
            logits = logits.masked_fill(drop.scatter(-1, order.indices, drop), float("-inf"))
        return logits

    def pick(self, scores: Tensor, generator: torch.Generator | None) -> Tensor:
        if not self.do_sample:
            return scores.argmax(-1)
        return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]


@dataclass
class GenerationOutput:
    sequences: Tensor  # (b, n + T): the input followed by the new tokens (pad after a row stops)
    logits: Tensor  # (b, T, vocab) float32: the raw logits each new token was chosen from
    num_new: Tensor  # (b,) new tokens per row before it stopped (its stop token included)


def forward_step(model, input_ids: Tensor, cache: HybridCache, num_new: Tensor | None = None) -> Tensor:
    """Run ``input_ids`` (b, L) after what ``cache`` holds and store them; final hidden states.

    ``num_new`` (b,): real tokens per row when rows are right-padded (None: all L are real).
    """
    layout = cache.layout(input_ids.shape[1], num_new)
    h = model.model.run_layers(model.model.embed_tokens(input_ids), layout)
    cache.advance(input_ids.shape[1])
    return h


class DecodeGraph:
    """The single-token decode step (one token per row → raw float32 logits) as a CUDA graph.

    ``cache`` must have ``static_shapes`` (no tensor shape of a step depends on how much of it
    is used). The first call runs the step eagerly (warm-up: Triton compilation and lazy
    initialisation stay outside the graph) and captures it; later calls replay it. The returned
    logits are a buffer that the next call overwrites.
    """

    def __init__(self, model, cache: HybridCache) -> None:
        if not cache.static_shapes:
            raise ValueError("a captured decode step needs a HybridCache(static_shapes=True)")
        self.model, self.cache = model, cache
        self.tokens = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=cache.lengths.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None

    def _step(self) -> Tensor:
        h = forward_step(self.model, self.tokens, self.cache)[:, 0]
        return self.model.lm_head(h).float()

    def __call__(self, tokens: Tensor) -> Tensor:
        """Store ``tokens`` (b,) after what the cache holds; the next token's logits (b, V)."""
        self.tokens.copy_(tokens[:, None])
        if self.graph is not None:
            self.cache.check_room(1)
            self.graph.replay()
            self.cache.extent += 1  # the graph advanced the device-side lengths
            return self.logits
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            logits = self._step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._step()
        self.graph = graph
        self.cache.extent -= 1  # capturing ran no kernel: nothing more was stored
        return logits


def pack_prompts(model, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Validate prompts and move each row's real tokens to the front.

    Returns ``(packed ids (b, L), real tokens per row (b,) or None if no row is padded)``.
    """
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        raise InputError("input_ids must be a (batch, length) tensor of token ids")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise InputError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
    b, length = input_ids.shape
    if b == 0 or length == 0:
        raise InputError("the prompt is empty: give at least one token")
    left_padding(attention_mask, input_ids)  # validates the mask's shape and form
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    vocab = model.config.vocab_size
    bad = mask & ((input_ids < 0) | (input_ids >= vocab))
    if bool(bad.any()):
        token = int(input_ids[bad][0])
        raise InputError(f"token id {token} is outside the model's vocabulary [0, {vocab})")
    starts = (~mask).long().cumprod(-1).sum(-1)
    counts = mask.long().sum(-1)
    index = (starts[:, None] + torch.arange(length, device=input_ids.device)).clamp(max=length - 1)
    packed = torch.gather(input_ids, 1, index)
    packed = torch.where(torch.arange(length, device=packed.device) < counts[:, None], packed, 0)
    padded = bool((counts != length).any())
    return packed.long(), (counts if padded else None)


class DecodeLoop:
    """Prefill once, then yield one step at a time: ``(tokens (b,), raw logits (b, V))``.

    Rows that finished (EOS, or marked in :attr:`done` by the caller, e.g. for a stop string)
    receive ``pad_token_id``; iteration ends when every row is done or after
    ``max_new_tokens`` steps.
    """

    def __init__(
        self,
        model,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        max_new_tokens: int = 20,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        swa_decode: SWADecode = "trained",
        cuda_graph: bool | None = None,
    ) -> None:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if swa_decode not in ("trained", "reference"):
            raise InputError(f"swa_decode must be 'trained' or 'reference', got {swa_decode!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an integer, got {seed!r}")
        config = model.config
        self.model, self.sampling, self.max_new_tokens = model, sampling, max_new_tokens
        self.packed, self.counts = pack_prompts(model, input_ids, attention_mask)
        longest = self.packed.shape[1]
        limit = config.max_position_embeddings
        if longest + max_new_tokens > limit:
            raise InputError(
                f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
                f"maximum of {limit} tokens (max_position_embeddings)"
            )
        eos = config.eos_token_id if eos_token_id is None else eos_token_id
        eos_list = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        device = model.device
        self.eos = torch.tensor(eos_list, dtype=torch.long, device=device)
        pad = pad_token_id if pad_token_id is not None else config.pad_token_id
        self.pad = 0 if pad is None else int(pad)
        use_graph = device.type == "cuda" if cuda_graph is None else bool(cuda_graph)
        if use_graph and device.type != "cuda":
            raise InputError("cuda_graph=True needs a model on a CUDA device")
        # one captured step is kept per model (with its cache) and reused by the next loop of the
        # same shape; a loop takes it out while it runs (concurrent loops never share it), and a
        # loop of another shape drops it before allocating its own cache
        self._graph_key, kept = None, None
        if use_graph:
            self._graph_key = (self.packed.shape[0], longest + max_new_tokens, swa_decode, _params_key(model))
            kept = getattr(model, "_hymba_decode_graph", None)
            model._hymba_decode_graph = None
        self.graph: DecodeGraph | None = None
        if kept is not None and kept[0] == self._graph_key:
            self.graph = kept[1]
            self.cache = self.graph.cache
        else:
            self.cache = HybridCache(
                config, self.packed.shape[0], longest + max_new_tokens, dtype=model.dtype,
                device=device, swa_decode=swa_decode, static_shapes=use_graph,
            )
            if use_graph:
                self.graph = DecodeGraph(model, self.cache)
        self.generator = None
        if sampling.do_sample:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(torch.seed() if seed is None else seed)
        self.done = torch.zeros(self.packed.shape[0], dtype=torch.bool, device=device)

    @torch.no_grad()
    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        model, packed = self.model, self.packed.to(self.model.device)
        self.cache.reset(meta_prefix(model))
        counts = None if self.counts is None else self.counts.to(packed.device)
        h = forward_step(model, packed, self.cache, counts)
        last = packed.shape[1] - 1 if counts is None else counts - 1
        h = h[:, -1] if counts is None else h[torch.arange(h.shape[0]), last]
        seen = None
        if self.sampling.repetition_penalty != 1.0:
            valid = torch.ones_like(packed, dtype=torch.bool) if counts is None else (
                torch.arange(packed.shape[1], device=packed.device) < counts[:, None])
            seen = torch.zeros(packed.shape[0], model.config.vocab_size, dtype=torch.bool, device=packed.device)
            seen.scatter_(1, torch.where(valid, packed, packed[:, :1]), True)
        logits = model.lm_head(h).float()
        try:
            yield from self._decode(logits, seen)
        finally:
            if self.graph is not None and self.graph.graph is not None:
                model._hymba_decode_graph = (self._graph_key, self.graph)

    def _decode(self, logits: Tensor, seen: Tensor | None) -> Iterator[tuple[Tensor, Tensor]]:
        model = self.model
        for step in range(self.max_new_tokens):
            tokens = self.sampling.pick(self.sampling.scores(logits, seen), self.generator)
            tokens = torch.where(self.done, self.pad, tokens)
            yield tokens, logits
            self.done |= torch.isin(tokens, self.eos)
            if step + 1 == self.max_new_tokens or bool(self.done.all()):
                return
            if seen is not None:
                seen.scatter_(1, tokens[:, None], True)
            if self.graph is not None:
                logits = self.graph(tokens).clone()
            else:
                logits = model.lm_head(forward_step(model, tokens[:, None], self.cache)[:, 0]).float()


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
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: Sequence[str] | None = None,
    tokenizer=None,
    swa_decode: SWADecode = "trained",
    output_logits: bool = False,
    cuda_graph: bool | None = None,
) -> Tensor | GenerationOutput:
    """Continue each prompt; returns the input followed by the new tokens, a LongTensor (b, n+T).

    ``attention_mask`` marks real tokens of a left-padded batch. A row stops after
    ``max_new_tokens``, at ``eos_token_id`` (default: the config's; ``[]`` disables it) or once
    its text contains one of ``stop_strings`` (needs ``tokenizer``); later positions hold
    ``pad_token_id`` (default: the config's). ``swa_decode="reference"`` reproduces NVIDIA's
    cached decoding (one key fewer in sliding-window layers; see :class:`HybridCache`).
    With ``output_logits`` a :class:`GenerationOutput` also carries the step logits.
    ``cuda_graph`` (default: on for a CUDA model) replays each decode step as a captured CUDA
    graph (:class:`DecodeGraph`); the captured step and its cache stay on the model for the next
    call with the same batch size and length.
    """
    sampling = SamplingConfig(
        do_sample=bool(do_sample), temperature=temperature, top_k=0 if top_k is None else top_k,
        top_p=1.0 if top_p is None else top_p, repetition_penalty=repetition_penalty,
    )
    run = DecodeLoop(
        model, input_ids, attention_mask, max_new_tokens=max_new_tokens, sampling=sampling,
        seed=seed, eos_token_id=eos_token_id, pad_token_id=pad_token_id, swa_decode=swa_decode,
        cuda_graph=cuda_graph,
    )
    stops = _StopStrings(tokenizer, stop_strings) if stop_strings else None
    new: list[Tensor] = []
    logits: list[Tensor] = []
    rows: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    num_new = torch.zeros(input_ids.shape[0], dtype=torch.long)
    for tokens, step_logits in run:
        num_new += (~run.done).long().cpu()
        new.append(tokens)
        logits.append(step_logits)
        if stops is not None:
            for i, token in enumerate(tokens.tolist()):
                if not run.done[i]:
                    rows[i].append(token)
                    if stops.hit(rows[i]):
                        run.done[i] = True
    sequences = torch.cat([input_ids.to(new[0].device).long(), torch.stack(new, 1)], 1)
    if not output_logits:
        return sequences
    return GenerationOutput(sequences, torch.stack(logits, 1), num_new)


def stream(
    model,
    tokenizer,
    prompt: str | Sequence[int],
    *,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop_strings: Sequence[str] = (),
    swa_decode: SWADecode = "trained",
) -> Iterator[str]:
    """Generate for one prompt (text or ids) and yield the new text piece by piece.

    Stops at the tokenizer's EOS or before the first stop string. Text is held back while it
    could still become a stop string or ends in an incomplete character.
    """
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise InputError("the prompt is empty: give at least one token")
    sampling = SamplingConfig(
        do_sample=bool(do_sample), temperature=temperature, top_k=0 if top_k is None else top_k,
        top_p=1.0 if top_p is None else top_p, repetition_penalty=repetition_penalty,
    )
    eos = tokenizer.eos_token_id
    run = DecodeLoop(
        model, torch.tensor([ids], device=model.device), max_new_tokens=max_new_tokens,
        sampling=sampling, seed=seed, eos_token_id=[] if eos is None else eos, swa_decode=swa_decode,
    )
    stops = [s for s in stop_strings if s]
    out: list[int] = []
    shown = 0
    for tokens, _ in run:
        token = int(tokens[0])
        if token == eos:
            break
        out.append(token)
        text = tokenizer.decode(out)
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            if cut > shown:
                yield text[shown:cut]
            return
        safe = _safe_length(text, stops)
        if safe > shown:
            yield text[shown:safe]
            shown = safe
    text = tokenizer.decode(out).rstrip("\ufffd")
    if len(text) > shown:
        yield text[shown:]


def _safe_length(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` can be shown: not an incomplete character at the end, nor a suffix
    that may grow into a stop string."""
    safe = len(text.rstrip("\ufffd"))
    for stop in stops:
        for k in range(min(len(stop) - 1, safe), 0, -1):
            if text[:safe].endswith(stop[:k]):
                safe -= k
                break
    return safe

"""A small stand-in that obeys ENGINE_API.md (the synchronous engine contract), used where the
serving tests inject failures the real engine does not make on purpose: a request that fails alone
(a prompt with ``poison_id``) and a ``step()`` that raises (``explode_after`` steps). Underneath it
is a seeded random bigram "model" (the next token's logits depend on the last token only) with
slots, a bounded queue, per-request sampling, stop strings with held-back text, logprobs and
prompt logprobs, and abort. It speaks the real engine's types (``hymba.serving.engine``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from hymba.inference.text import safe_length
from hymba.model import InputError
from hymba.serving.engine import EngineConfig, LogProb, QueueFull, RequestOutput


@dataclass
class _Request:
    rid: str
    prompt: list[int]
    params: object
    out: list[int] = field(default_factory=list)
    shown: int = 0          # characters of the text handed out
    first: bool = True      # prompt logprobs go with the first output
    generator: torch.Generator | None = None


class FakeEngine:
    """See the module docstring. ``step_delay`` seconds of sleep per step emulate model time;
    a prompt containing ``poison_id`` makes that request fail alone; ``explode_after`` steps make
    ``step()`` raise (an engine bug)."""

    def __init__(self, tokenizer, config=None, *, seed: int = 0, step_delay: float = 0.0,
                 poison_id: int | None = None, explode_after: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.max_model_len = self.config.max_model_len or 1024
        self.vocab = len(tokenizer)
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(self.vocab, self.vocab, generator=g) * 4.0
        self.eos = tokenizer.eos_token_id
        self.step_delay = step_delay
        self.poison_id = poison_id
        self.explode_after = explode_after
        self.waiting: deque[_Request] = deque()
        self.running: dict[str, _Request] = {}
        self.reports: list[RequestOutput] = []
        self.counter = 0
        self.totals = dict(tokens_generated_total=0, prompt_tokens_total=0, steps_total=0)
        self.calls_from: set[int] = set()  # thread ids that called in (the contract: only one)

    # -- the contract --------------------------------------------------------------------------
    def add_request(self, prompt_ids, params, request_id=None) -> str:
        self._note_thread()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise InputError("the prompt is empty")
        if any(t < 0 or t >= self.vocab for t in prompt):
            raise InputError(f"token ids must be in [0, {self.vocab})")
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise InputError(f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) "
                             f"exceeds max_model_len {self.max_model_len}")
        free = self.config.max_batch - len(self.running)
        if len(self.waiting) - free >= self.config.max_queue:  # waiting beyond the free slots
            raise QueueFull(f"{len(self.waiting)} requests waiting")
        if request_id is None:
            request_id = f"fake-{self.counter}"
        self.counter += 1
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self.waiting.append(_Request(request_id, prompt, params, generator=gen))
        return request_id

    def abort(self, request_id: str) -> None:
        self._note_thread()
        req = self.running.pop(request_id, None)
        if req is None:
            for r in self.waiting:
                if r.rid == request_id:
                    req = r
                    self.waiting.remove(r)
                    break
        if req is not None:
            self.reports.append(self._output(req, [], "", None, True, "abort"))

    def has_unfinished(self) -> bool:
        self._note_thread()
        return bool(self.waiting or self.running or self.reports)

    def stats(self) -> dict:
        self._note_thread()
        used = len(self.running)
        return dict(running=used, waiting=len(self.waiting), slots_total=self.config.max_batch,
                    slots_used=used, state_bytes_in_use=used * 4096, prefix_hits=0,
                    prefix_misses=self.counter, prefix_bytes=0, **self.totals)

    def step(self) -> list[RequestOutput]:
        self._note_thread()
        self.totals["steps_total"] += 1
        if self.explode_after is not None and self.totals["steps_total"] > self.explode_after:
            raise RuntimeError("injected engine failure")
        outputs, self.reports = self.reports, []
        while self.waiting and len(self.running) < self.config.max_batch:
            req = self.waiting.popleft()
            self.running[req.rid] = req
            self.totals["prompt_tokens_total"] += len(req.prompt)
        if self.running and self.step_delay:
            time.sleep(self.step_delay)
        for rid in list(self.running):
            req = self.running[rid]
            if self.poison_id is not None and self.poison_id in req.prompt:
                del self.running[rid]
                outputs.append(self._output(req, [], "", None, True, "error", "poisoned prompt"))
                continue
            if req.params.max_tokens == 0:  # score the prompt only
                del self.running[rid]
                outputs.append(self._output(req, [], "", None, True, "length"))
                continue
            outputs.append(self._advance(req))
            if outputs[-1].finished:
                del self.running[rid]
        return outputs

    def generate(self, prompts, params) -> list[list[int]]:  # the offline convenience of the contract
        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, plist)]
        done: dict[str, list[int]] = {i: [] for i in ids}
        while self.has_unfinished():
            for out in self.step():
                done[out.request_id] += out.new_token_ids
        return [done[i] for i in ids]

    # -- the bigram model ----------------------------------------------------------------------
    def _logprobs(self, last: int) -> torch.Tensor:
        return torch.log_softmax(self.table[last], -1)

    def _entry(self, dist: torch.Tensor, token: int, k: int) -> LogProb:
        top = torch.topk(dist, k) if k else None
        pairs = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
        return LogProb(token, float(dist[token]), pairs)

    def _advance(self, req: _Request) -> RequestOutput:
        p = req.params
        seq = req.prompt + req.out
        logits = self.table[seq[-1]].clone()
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq)))
            vals = logits[seen]
            logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.temperature == 0:
            token = int(torch.argmax(logits))
        else:
            scores = logits / p.temperature
            if p.top_k:
                kth = torch.topk(scores, min(p.top_k, self.vocab)).values[-1]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            probs = torch.softmax(scores, -1)
            if p.top_p < 1:
                sp, si = torch.sort(probs, descending=True)
                drop = torch.cumsum(sp, 0) - sp > p.top_p
                probs = probs.clone()
                probs[si[drop]] = 0
                probs /= probs.sum()
            token = int(torch.multinomial(probs, 1, generator=req.generator))
        lps = None
        if p.logprobs is not None:
            lps = [self._entry(self._logprobs(seq[-1]), token, p.logprobs)]
        req.out.append(token)
        self.totals["tokens_generated_total"] += 1
        if (token == self.eos and not p.ignore_eos) or token in p.stop_token_ids:
            text = self._flush(req, req.out[:-1])
            return self._output(req, [token], text, lps, True, "stop")
        full = self.tokenizer.decode(req.out)
        cuts = [i for i in (full.find(s) for s in p.stop) if i >= 0]
        if cuts:
            text = full[req.shown:min(cuts)] if min(cuts) > req.shown else ""
            return self._output(req, [token], text, lps, True, "stop")
        if len(req.out) >= p.max_tokens:
            return self._output(req, [token], self._flush(req, req.out), lps, True, "length")
        safe = safe_length(full, p.stop)
        text = full[req.shown:safe] if safe > req.shown else ""
        req.shown = max(req.shown, safe)
        return self._output(req, [token], text, lps, False, None)

    def _flush(self, req: _Request, ids: list[int]) -> str:
        full = self.tokenizer.decode(ids).rstrip("\ufffd")  # as the engine: no incomplete last character
        return full[req.shown:]

    def _output(self, req, new, text, lps, finished, reason, error=None) -> RequestOutput:
        prompt_lps = None
        if req.first and req.params.prompt_logprobs:
            k = req.params.logprobs or 0
            prompt_lps = [None] + [self._entry(self._logprobs(req.prompt[i - 1]), req.prompt[i], k)
                                   for i in range(1, len(req.prompt))]
        req.first = False
        return RequestOutput(req.rid, list(new), text, lps, prompt_lps, finished, reason, error,
                             len(req.prompt), len(req.out))

    def _note_thread(self) -> None:
        self.calls_from.add(threading.get_ident())

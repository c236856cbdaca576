"""The design-roadmap ablation (paper Table 10), small-scale: same budget, different switches.

Every variant is the same small model with different config switches (``mixer_type``,
``sliding_window``, ``global_attn_idx``, ``kv_reuse_group``, ``num_memory_tokens``), trained
from the same seed on the same stream: multi-query associative recall (MQAR, with the key–value
block at a random depth, so recall distances range from 1 to the sequence length; sequence lengths
drawn from the training length and its halves, so that short-range recall is learnt first and
long-range recall builds on it) interleaved with byte-level text. Each trained variant is then
measured on

* MQAR accuracy at lengths within and beyond the sliding window (pairs first, queries last);
  "beyond" averages the lengths up to the training length, the recall curve goes further;
* byte-level perplexity on held-out text (:mod:`hymba.eval.perplexity`);
* cache size at ``cache_len`` tokens in fp16 (:func:`hymba.inference.accounting.cache_bytes`);
* prefill throughput (tokens/s of a no-grad forward on this machine);
* where attention goes (:mod:`hymba.eval.analysis`): mean share of attention mass on meta tokens
  and on the first token over one held-out text.

The text is the bundled Shakespeare/Milton corpus (``hymba/data/corpus.jsonl.gz``, 5.7 MB):
whole works are held out for perplexity, the rest is the training stream.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..config import HymbaConfig, global_layers, hymba_layout
from ..inference.accounting import cache_bytes
from ..model import HymbaForCausalLM, InputError
from ..train import TrainArgs, train_model
from ..train.bpe import BUNDLED_CORPUS, bundled_data_dir
from ..train.sources import iter_documents
from .analysis import analyze
from .perplexity import token_perplexity
from .recall import RecallBatch, SyntheticVocab, mqar_accuracy, mqar_batch


@dataclass(frozen=True)
class Budget:
    """Model shape, training budget and evaluation sizes of one ablation run."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    window: int
    meta: int
    steps: int
    batch: int
    train_len: int
    lr: float
    pairs: int
    num_keys: int
    text_every: int  # every n-th step trains on text (0: never)
    eval_lengths: tuple[int, ...]
    eval_samples: int
    ppl_passages: int  # held-out text for perplexity, in passages of about PASSAGE_CHARS
    throughput_len: int
    cache_len: int = 8000


BUDGETS: dict[str, Budget] = {
    # A smoke run for CI: every variant, a handful of steps; checks the machinery, not the claims.
    "tiny": Budget(hidden=32, layers=6, heads=2, kv_heads=1, mlp=64, window=8, meta=4, steps=4,
                   batch=4, train_len=32, lr=2e-3, pairs=1, num_keys=8, text_every=2,
                   eval_lengths=(8, 16, 32), eval_samples=8, ppl_passages=1, throughput_len=64),
    # Minutes on a 2-core CPU per variant.
    "small": Budget(hidden=64, layers=6, heads=4, kv_heads=2, mlp=128, window=16, meta=8, steps=600,
                    batch=16, train_len=64, lr=2e-3, pairs=2, num_keys=16, text_every=4,
                    eval_lengths=(12, 16, 32, 64, 128), eval_samples=64, ppl_passages=24,
                    throughput_len=512),
    # One GPU: every variant a separate process (``--jobs``) so that all nine share one GPU.
    "large": Budget(hidden=256, layers=8, heads=8, kv_heads=4, mlp=768, window=64, meta=16,
                    steps=1000, batch=32, train_len=512, lr=2e-3, pairs=4, num_keys=32,
                    text_every=4, eval_lengths=(40, 64, 128, 256, 512, 1024),
                    eval_samples=128, ppl_passages=48, throughput_len=4096),
}


# (key, description, paper Table 10 row, switches as a function of the layer and meta-token counts)
Variant = tuple[str, str, str, Callable[[int, int], dict]]


_ALL_GLOBAL = dict(sliding_window=None, global_attn_idx=[], kv_reuse_group=[])

VARIANTS: list[Variant] = [
    ("ssm", "SSM heads only", "1", lambda n, m: dict(mixer_type="ssm", num_memory_tokens=0)),
    ("ssm-meta", "SSM heads only + meta tokens", "12",
     lambda n, m: dict(mixer_type="ssm", num_memory_tokens=m)),
    ("attn", "attention only (all global)", "6",
     lambda n, m: dict(mixer_type="attention", num_memory_tokens=0, **_ALL_GLOBAL)),
    ("attn-compressed", "attention only + SWA, 3 global, KV share", "10",
     lambda n, m: dict(mixer_type="attention", num_memory_tokens=0, **hymba_layout(n))),
    ("hybrid-global", "hybrid heads, all global", "5",
     lambda n, m: dict(num_memory_tokens=0, **_ALL_GLOBAL)),
    ("hybrid-swa", "hybrid heads, all SWA", "7",
     lambda n, m: dict(global_attn_idx=[], kv_reuse_group=[], num_memory_tokens=0)),
    ("hybrid-swa3", "hybrid heads, SWA + 3 global", "8",
     lambda n, m: dict(global_attn_idx=global_layers(n), kv_reuse_group=[], num_memory_tokens=0)),
    ("hybrid-kvshare", "hybrid, SWA + 3 global + KV share", "9",
     lambda n, m: dict(num_memory_tokens=0, **hymba_layout(n))),
    ("hymba", "hybrid, SWA + 3 global + KV share + meta tokens (Hymba)", "13",
     lambda n, m: dict(num_memory_tokens=m, **hymba_layout(n))),
]


def variant_config(budget: Budget, switches: dict, vocab_size: int) -> HymbaConfig:
    base = dict(
        vocab_size=vocab_size, hidden_size=budget.hidden, intermediate_size=budget.mlp,
        num_hidden_layers=budget.layers, num_attention_heads=budget.heads,
        num_key_value_heads=budget.kv_heads, sliding_window=budget.window,
        num_memory_tokens=budget.meta, mamba_dt_rank="auto", rope_type=None,
        max_position_embeddings=max(budget.eval_lengths + (budget.throughput_len, budget.train_len)),
        orig_max_position_embeddings=None, torch_dtype="float32", pad_token_id=0,
        global_attn_idx=[], kv_reuse_group=[],
    )
    return HymbaConfig(**{**base, **switches})


# ---------------------------------------------------------------------------------------------
# Data: MQAR batches interleaved with byte-level text

PASSAGE_CHARS = 1024


def corpus_works() -> list[str]:
    """The bundled corpus (``hymba/data``): one string per work, in file order."""
    path = os.path.join(bundled_data_dir(), BUNDLED_CORPUS)
    works = [w for w in iter_documents([path]) if isinstance(w, str)]
    if len(works) < 2:
        raise InputError(f"{path} holds {len(works)} works; the ablation needs at least 2")
    return works


def passages(text: str, size: int = PASSAGE_CHARS) -> list[str]:
    """``text`` cut into pieces of at most ``size`` characters, at paragraph breaks where
    possible, else at line breaks (a single longer line is a piece of its own)."""
    out: list[str] = []
    current = ""
    for para in text.split("\n\n"):
        units = [para] if len(para) <= size else para.split("\n")
        for n, unit in enumerate(units):
            joiner = "\n" if n else "\n\n"
            if current and len(current) + len(joiner) + len(unit) > size:
                out.append(current)
                current = ""
            current = f"{current}{joiner}{unit}" if current else unit
    if current:
        out.append(current)
    return out


def split_corpus(works: Sequence[str], held_passages: int, seed: int) -> tuple[list[str], list[str]]:
    """(training works, held-out passages): whole works, in a seeded order, are held out until
    they hold ``3 × held_passages`` passages (one work, usually); ``held_passages`` of those,
    evenly spaced, are the held-out text. The other works are the training stream."""
    order = list(works)
    random.Random(seed).shuffle(order)
    held: list[str] = []
    while len(held) < 3 * held_passages and len(order) > 1:
        held += passages(order.pop(0))
    step = max(1, len(held) // max(1, held_passages))
    return order, held[::step][:held_passages]


class ByteText:
    """Text as token ids in the synthetic vocabulary's filler range (one byte, one token)."""

    def __init__(self, vocab: SyntheticVocab, docs: Sequence[str]) -> None:
        self.offset = vocab.filler.start
        if len(vocab.filler) < 256:
            raise InputError("the vocabulary needs 256 filler ids for byte-level text")
        self.docs = [[1] + [self.offset + b for b in d.encode("utf-8")] for d in docs]
        self.stream = [t for d in self.docs for t in d]

    def batch(self, rng: random.Random, batch: int, length: int) -> torch.Tensor:
        starts = [rng.randrange(0, len(self.stream) - length) for _ in range(batch)]
        return torch.tensor([self.stream[s:s + length] for s in starts])


def mqar_lengths(budget: Budget) -> list[int]:
    """Sequence lengths of the MQAR training batches: the training length and its halves down to
    an eighth, as long as the pairs and queries fit."""
    need = max(8, 1 + 4 * budget.pairs)
    if budget.train_len < need:
        raise InputError(f"training length {budget.train_len} is too short for {budget.pairs} MQAR pairs "
                         f"(needs {need})")
    return [budget.train_len >> s for s in range(4) if budget.train_len >> s >= need]


def training_batches(budget: Budget, vocab: SyntheticVocab, text: ByteText, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The shared training stream: ``(input_ids, labels)``; labels are -100 where unscored.

    Every step holds about ``batch × train_len`` tokens: an MQAR batch of a length drawn from
    :func:`mqar_lengths` has proportionally more rows (more queries per step where they are cheap).
    """
    rng = random.Random(seed)
    lengths = mqar_lengths(budget)
    for step in range(budget.steps):
        if budget.text_every and step % budget.text_every == budget.text_every - 1:
            ids = text.batch(rng, budget.batch, budget.train_len)
            yield ids, ids.clone()
        else:
            length = rng.choice(lengths)
            rows = budget.batch * budget.train_len // length
            b: RecallBatch = mqar_batch(rows, length, vocab, budget.pairs,
                                        seed=rng.randrange(1 << 30), needle_depth=rng.random())
            yield b.input_ids, b.labels()


REPORT_EVERY = 10  # training steps between two reads of the loss


def train_args(budget: Budget) -> TrainArgs:
    """The optimisation settings of every variant: AdamW (betas 0.9/0.98, no weight decay), a
    cosine schedule (5% warm-up, decay to 10% of the peak), gradient clipping at 1; bf16 autocast
    on CUDA (the trainer's default)."""
    return TrainArgs(max_steps=budget.steps, lr=budget.lr, schedule="cosine", warmup=0.05,
                     min_lr=0.1 * budget.lr, weight_decay=0.0, adam_beta2=0.98, grad_clip=1.0)


def train(model: HymbaForCausalLM, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], budget: Budget,
          progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``model`` on the ablation's labelled batches with :func:`hymba.train.train_model`
    under :func:`train_args`; the model is left in eval mode. Returns the loss of every step.

    ``progress(steps_done, last_loss)`` is called every ``REPORT_EVERY`` steps."""
    losses = train_model(model, batches, train_args(budget), progress, report_every=REPORT_EVERY)
    model.eval()
    return losses


@torch.no_grad()
def prefill_throughput(model: HymbaForCausalLM, length: int, batch: int = 4, repeats: int = 3) -> float:
    """Tokens per second of a no-grad forward over ``batch × length`` tokens (best of repeats)."""
    device = next(model.parameters()).device
    ids = torch.randint(4, model.config.vocab_size, (batch, length), device=device)
    model(ids[:, :8])  # warm-up
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(ids, logits_to_keep=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return batch * length / best


def run_variant(
    key: str, name: str, row: str, switches: dict, budget: Budget, vocab: SyntheticVocab, text: ByteText,
    held_out: Sequence[Sequence[int]], device: str, seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> dict:
    """Train one variant and measure it; returns its table row (plus its recall curve)."""
    config = variant_config(budget, switches, vocab.vocab_size)
    torch.manual_seed(seed)
    model = HymbaForCausalLM(config).to(device)
    start = time.perf_counter()
    losses = train(model, training_batches(budget, vocab, text, seed), budget, progress)
    train_s = time.perf_counter() - start
    curve = mqar_accuracy(model, vocab, budget.eval_lengths, budget.eval_samples, budget.pairs,
                          seed=seed + 1)
    within = [r["accuracy"] for r in curve if r["length"] <= budget.window]
    # beyond the window but within the training length (longer lengths test extrapolation)
    beyond = [r["accuracy"] for r in curve if budget.window < r["length"] <= budget.train_len]
    ppl = token_perplexity(model, held_out, [len(d) - 1 for d in held_out], window=budget.train_len,
                           stride=budget.train_len // 2, batch_size=8)
    probe = analyze(model, torch.tensor([held_out[len(held_out) // 2][: budget.train_len]]))
    return {
        "key": key, "variant": name, "paper_row": row, "switches": switches,
        "parameters": model.num_parameters(),
        "recall_within": sum(within) / max(1, len(within)),
        "recall_beyond": sum(beyond) / max(1, len(beyond)),
        "ppl": ppl.perplexity, "bits_per_byte": ppl.loss / math.log(2),
        "cache_mb": cache_bytes(config, budget.cache_len)["total"] / 1e6,
        "tok_per_s": prefill_throughput(model, budget.throughput_len),
        "train_s": train_s, "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "attention_share": probe.get("mean_attention_share"),
        "ssm_to_attention_magnitude": probe.get("ssm_to_attention_magnitude_ratio"),
        "curve": curve,
    }


def run_ablation(
    budget: Budget, names: Sequence[str] | None = None, device: str = "cpu", seed: int = 0,
    on_result: Callable[[dict], None] | None = None,
    progress: Callable[[str, int, float], None] | None = None,
) -> list[dict]:
    """Run the variants (all, or those whose keys are given) under one budget; returns rows."""
    chosen = [v for v in VARIANTS if names is None or v[0] in names]
    unknown = set(names or []) - {v[0] for v in VARIANTS}
    if unknown:
        raise InputError(f"unknown variants {sorted(unknown)}; known: {', '.join(v[0] for v in VARIANTS)}")
    vocab = SyntheticVocab(4 + 2 * budget.num_keys + 256, budget.num_keys, budget.num_keys)
    works, held = split_corpus(corpus_works(), budget.ppl_passages, seed)
    text = ByteText(vocab, works)
    held_out = ByteText(vocab, held).docs
    rows = []
    for key, name, row, make in chosen:
        switches = make(budget.layers, budget.meta)
        report = (lambda s, loss, key=key: progress(key, s, loss)) if progress else None
        result = run_variant(key, name, row, switches, budget, vocab, text, held_out, device, seed, report)
        rows.append(result)
        if on_result:
            on_result(result)
    return rows


def markdown_table(rows: Sequence[dict], budget: Budget) -> str:
    """The Table-10-like summary."""
    head = (f"| Table 10 row | variant | params | MQAR ≤ window ({budget.window}) | MQAR > window | "
            f"ppl (byte) | cache MB @{budget.cache_len} fp16 | prefill tok/s | attn → meta / first | "
            "train s |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [
        f"| {r['paper_row']} | {r['variant']} (`{r['key']}`) | {r['parameters'] / 1e3:.0f}k | {r['recall_within']:.3f} | "
        f"{r['recall_beyond']:.3f} | {r['ppl']:.3f} | {r['cache_mb']:.3f} | {r['tok_per_s']:.0f} | "
        f"{_sink(r)} | {r['train_s']:.0f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def _sink(row: dict) -> str:
    share = row.get("attention_share")
    return "-" if not share else f"{share['meta']:.2f} / {share['first']:.2f}"

"""GPU throughput of Hymba-1.5B against HF Llama-3.2-1B/3B, with the machine's own ceilings.

    python benchmarks/throughput.py [--json out.json] [--profile-dir DIR] [--parts prefill decode train llama generate quant]

All models have random weights in bfloat16 (the shapes are what matters for speed). Reported:

- ceilings measured here: device-to-device copy bandwidth (bytes read + written) and the bf16
  matrix-product rate (8192³, random data);
- prefill: one forward over an 8K prompt (batch 1), tokens/s and MFU (matmul + attention FLOPs
  over the measured matmul rate), the host's time to enqueue it (host-bound when close), and
  for Hymba the same prefill replayed as a CUDA graph (the GPU's work alone);
- decode: ms per step and tokens/s at batch 1/32/128 after an 8K prompt, bytes one step must move
  (weights + cache), and the achieved fraction of that roofline; Hymba's step replayed as a CUDA
  graph (:class:`hymba.inference.DecodeGraph`, the default of ``generate`` on CUDA) and eager. Hymba's cache is filled with
  random K/V and state as an 8K prompt would leave it (same shapes, same bytes); Llama's is
  filled by a real chunked prefill (HF DynamicCache);
- training: one fwd+bwd step of Hymba-1.5B on ``--train-batch`` 4K sequences (default 1; fp32
  weights, bf16 autocast), with and without activation checkpointing, each eager and replayed as
  a CUDA graph (:class:`hymba.train.graph.TrainingGraph`, ``hymba train --cuda-graph``), tokens/s
  and MFU (6·N·T + attention, recomputation not counted);
- generate: the user's path, ``model.generate`` timed as a whole call (random prompts, EOS off) at
  batch x prompt = 1 x 8000, 32 x 8000, 128 x 2048 and 128 x 8000; the decode step from the
  difference of two calls with ``--gen-tokens`` (default 16 and 144) new tokens, the prefill as
  the rest; peak memory of each call; next to HF Llama-3.2-1B's ``generate`` with a static cache
  and ``torch.compile`` (its strongest setting) on the same prompts, each against its own decode
  roofline (weights + the cache at that length).
- quant: Hymba's decode step (as in ``decode``, after an 8K prompt, CUDA graph and eager) at batch
  1 and 32 with bf16 weights and with the decoder linear weights quantized to int8 and int4
  (:func:`hymba.quantize`, torchao), each against bf16's time (goals: int8 <= 60% and int4 <= 40%
  of bf16's at batch 1) and against its own roofline (the quantized weights' bytes + the cache).

With ``--profile-dir`` the top CUDA kernels of a Hymba prefill, decode step and training step
are written there (torch.profiler).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from graph_timing import graph_time
from torch import nn

from hymba import HymbaConfig, HymbaForCausalLM, quantize
from hymba.inference import DecodeGraph, HybridCache, decode_logits, meta_prefix
from hymba.train.graph import TrainingGraph

PROMPT = 8192
TRAIN_LEN = 4096
BATCHES = (1, 32, 128)
PARTS = ("prefill", "decode", "train", "llama", "generate", "llama-generate", "quant")
GENERATE_SHAPES = ((1, 8000), (32, 8000), (128, 2048), (128, 8000))


# ----------------------------------------------------------------------------------------------
# timing and ceilings
def cuda_time(fn: Callable[[], object], warmup: int = 2, repeats: int = 5) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs, timed with CUDA events after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def copy_bandwidth() -> float:
    """Bytes/s of a 4 GiB device-to-device copy, counting bytes read and written."""
    src = torch.randn(1 << 30, device="cuda")
    dst = torch.empty_like(src)
    return 2 * 4 * (1 << 30) / cuda_time(lambda: dst.copy_(src), warmup=3, repeats=10)


def matmul_rate(n: int = 8192) -> float:
    """FLOP/s of an n³ bf16 matrix product on random data."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = cuda_time(lambda: a @ b, warmup=3, repeats=10)
    return 2 * n**3 / t


# ----------------------------------------------------------------------------------------------
# FLOP counts
def linear_params(model: nn.Module, exclude: tuple[nn.Module, ...]) -> int:
    skip = {id(m.weight) for m in exclude}
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) not in skip)


def visible_keys(length: int, window: int | None, num_meta: int) -> int:
    """Σ over queries of the keys each sees (causal, sliding window + always-visible meta)."""
    q = torch.arange(length, dtype=torch.float64)
    if window is None:
        return int((q + 1).sum())
    inside = torch.clamp(q, max=window) + 1
    meta = torch.clamp(torch.clamp(q - window, min=0), max=num_meta)
    return int((inside + meta).sum())


def hymba_forward_flops(model: HymbaForCausalLM, length: int, logits: int) -> float:
    """Matmul + attention FLOPs of one forward over ``length`` internal positions (batch 1)."""
    c = model.config
    dense = 2 * linear_params(model.model, ()) * length + 2 * c.vocab_size * c.hidden_size * logits
    per_key = 2 * c.num_attention_heads * (c.qk_head_dim + c.value_head_dim)
    attn = sum(per_key * visible_keys(length, spec.window, c.num_memory_tokens) for spec in c.layer_plan())
    return dense + attn


def llama_forward_flops(model: nn.Module, length: int, logits: int) -> float:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    dense = 2 * linear_params(model.model, ()) * length + 2 * c.vocab_size * c.hidden_size * logits
    attn = c.num_hidden_layers * 2 * c.num_attention_heads * 2 * head_dim * visible_keys(length, None, 0)
    return dense + attn


# ----------------------------------------------------------------------------------------------
# models
def hymba_model() -> HymbaForCausalLM:
    with torch.device("cuda"):
        model = HymbaForCausalLM(HymbaConfig.from_preset("hymba-1.5b"))
    return model.to(torch.bfloat16).eval()


LLAMA_SHAPES = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128),
}


def llama_model(name: str) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
        tie_word_embeddings=True, **LLAMA_SHAPES[name],
    )
    config._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16).eval()


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# measurements
@torch.no_grad()
def prefill(model: nn.Module, vocab: int, flops: float, rate: float) -> dict:
    """Prefill time, and the host's time to enqueue it: when the two are close the prefill is
    host-bound (launch overhead), not GPU-bound."""
    ids = torch.randint(0, vocab, (1, PROMPT), device="cuda")
    t = cuda_time(lambda: model(ids, logits_to_keep=1), warmup=2, repeats=5)
    return dict(prefill_rates(t, flops, rate), prefill_host_s=host_time(lambda: model(ids, logits_to_keep=1)))


@torch.no_grad()
def prefill_graphed(model: nn.Module, vocab: int, flops: float, rate: float) -> dict:
    """The same prefill captured once in a CUDA graph and replayed: its time without the host's
    launch cost, i.e. what the GPU's work alone allows (``generate`` does not prefill this way)."""
    ids = torch.randint(0, vocab, (1, PROMPT), device="cuda")
    return prefill_rates(graph_time(lambda i: model(ids, logits_to_keep=1), calls=1), flops, rate)


def prefill_rates(t: float, flops: float, rate: float) -> dict:
    return dict(prefill_s=t, prefill_tok_s=PROMPT / t, prefill_mfu=flops / t / rate)


def host_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median seconds the host spends in ``fn`` (until it returns, before the GPU finishes)."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        torch.cuda.synchronize()
    return sorted(times)[len(times) // 2]


def fill_hymba_cache(model: HymbaForCausalLM, batch: int, steps: int, static_shapes: bool = False) -> HybridCache:
    """A cache in the state an 8K prompt leaves it: random K/V and SSM/conv state."""
    cache = HybridCache(model.config, batch, PROMPT + steps, dtype=model.dtype, device="cuda",
                        static_shapes=static_shapes)
    cache.reset(meta_prefix(model))
    m = model.config.num_memory_tokens
    for slot, k in cache.k.items():
        k.normal_()
        cache.v[slot].normal_()
        if slot in cache.ring_pos:
            size = cache.ring_pos[slot].shape[1]
            pos = torch.arange(m + PROMPT - size, m + PROMPT, device="cuda")
            cache.ring_pos[slot].scatter_(1, ((pos - m) % size).expand(batch, -1), pos.expand(batch, -1))
    for state in list(cache.ssm.values()) + list(cache.conv.values()):
        state.normal_()
    cache.lengths.fill_(m + PROMPT)
    cache.extent = PROMPT
    return cache


def hymba_decode_bytes(model: HymbaForCausalLM, cache: HybridCache) -> int:
    """Weights + cache read once, conv/SSM state written back, new K/V written."""
    parts = cache.nbytes()
    state = parts["ssm_state"] + parts["conv_state"]
    return param_bytes(model) + parts["total"] + parts["meta_kv"] + state


@torch.no_grad()
def hymba_decode(model: HymbaForCausalLM, batch: int, bandwidth: float, cuda_graph: bool, steps: int = 12) -> dict:
    """Greedy decode steps; with ``cuda_graph`` each is a replay of :class:`DecodeGraph`."""
    warm = 3
    cache = fill_hymba_cache(model, batch, steps + warm, static_shapes=cuda_graph)
    tokens = torch.randint(0, model.config.vocab_size, (batch,), device="cuda")
    graph = DecodeGraph(model, cache) if cuda_graph else None

    def step():
        if graph is not None:
            logits = graph(tokens)
        else:
            logits = decode_logits(model, tokens, cache)
        tokens.copy_(logits.argmax(-1))

    t = cuda_time(step, warmup=warm, repeats=steps)
    moved = hymba_decode_bytes(model, cache)
    return dict(ms_step=t * 1e3, tok_s=batch / t, bytes_step=moved, roofline_frac=moved / bandwidth / t)


@torch.no_grad()
def llama_decode(model: nn.Module, batch: int, bandwidth: float, steps: int = 12) -> dict:
    c = model.config
    head_dim = c.head_dim
    kv_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 2 * batch * (PROMPT + steps + 8)
    free, _ = torch.cuda.mem_get_info()
    if kv_bytes > 0.5 * free:
        return dict(skipped=f"KV cache {kv_bytes / 1e9:.0f} GB does not fit beside the prefill")
    ids = torch.randint(0, c.vocab_size, (batch, PROMPT), device="cuda")
    out = None
    for part in ids.split(2048, dim=1):  # chunked prefill keeps the activations small
        out = model(part, past_key_values=None if out is None else out.past_key_values,
                    use_cache=True, logits_to_keep=1)
    state = dict(cache=out.past_key_values, tokens=out.logits[:, -1:].argmax(-1))

    def step():
        o = model(state["tokens"], past_key_values=state["cache"], use_cache=True)
        state["tokens"] = o.logits[:, -1:].argmax(-1)

    t = cuda_time(step, warmup=3, repeats=steps)
    context = PROMPT + 3 + steps // 2
    moved = param_bytes(model) + 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 2 * batch * context
    return dict(ms_step=t * 1e3, tok_s=batch / t, bytes_step=moved, roofline_frac=moved / bandwidth / t)


def hymba_training(rate: float, batch: int = 1, checkpointing: bool = True, cuda_graph: bool = False
                   ) -> tuple[dict, HymbaForCausalLM, Callable[[], None]]:
    with torch.device("cuda"):
        model = HymbaForCausalLM(HymbaConfig.from_preset("hymba-1.5b"))
    model.train()
    model.gradient_checkpointing_enable(checkpointing)
    ids = torch.randint(0, model.config.vocab_size, (batch, TRAIN_LEN), device="cuda")

    if cuda_graph:  # as `hymba train --cuda-graph` runs an optimizer step's first micro-step
        graph = TrainingGraph(model, torch.bfloat16)

        def step():
            graph(ids, ids)
    else:
        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(ids, labels=ids).loss
            loss.backward()
            model.zero_grad(set_to_none=True)

    t = cuda_time(step, warmup=2, repeats=5)
    length = TRAIN_LEN + model.config.num_memory_tokens
    flops = 3 * batch * hymba_forward_flops(model, length, TRAIN_LEN)
    result = dict(train_s=t, train_tok_s=batch * TRAIN_LEN / t, train_mfu=flops / t / rate,
                  peak_gb=torch.cuda.max_memory_allocated() / 1e9, batch=batch)
    return result, model, step


def profile(fn: Callable[[], object], path: Path, rows: int = 25) -> dict:
    """Write the top kernels of one call of ``fn`` to ``path``; return its kernel count and the
    summed kernel time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    summary = dict(kernels=len(kernels), kernel_ms=sum(e.device_time for e in kernels) / 1e3)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70)
    path.write_text(f"{summary}\n{table}")
    print(path.name, summary, flush=True)
    return summary


# ----------------------------------------------------------------------------------------------
def environment() -> dict:
    import triton

    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
        triton=triton.__version__, python=platform.python_version(),
    )
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    return info


def guarded(results: dict, key: str, fn: Callable[[], dict]) -> None:
    """Run one measurement; record its error instead of losing the rest of the run."""
    try:
        results[key] = fn()
    except Exception as exc:  # noqa: BLE001 - a benchmark reports every failure and goes on
        results[key] = dict(error=f"{type(exc).__name__}: {exc}"[:300])
    torch.cuda.empty_cache()
    print(f"{key}: {results[key]}", flush=True)


def prefill_bound(eager: dict, graphed: dict) -> str:
    """What decides an eager prefill's time: the host's launches (its enqueue time close to the
    wall time, or the wall time well above the same work replayed as a CUDA graph) or the GPU."""
    if eager["prefill_host_s"] > 0.9 * eager["prefill_s"]:
        return "host-bound"
    if "prefill_s" in graphed and eager["prefill_s"] > 1.05 * graphed["prefill_s"]:
        stall = eager["prefill_s"] - graphed["prefill_s"]
        return f"the GPU waits {stall * 1e3:.1f} ms for launches in all: host-bound in part"
    return "the GPU's work decides"


def table(results: dict) -> str:
    header = ["| model | prefill 8K tok/s | prefill MFU | " + " | ".join(
        f"decode b={b} tok/s (ms/step, roofline)" for b in BATCHES) + " |"]
    header.append("|" + " --- |" * (3 + len(BATCHES)))
    body: list[str] = []  # one row a model with anything measured
    rows = dict(results)
    if "hymba-1.5b" in results:
        rows["hymba-1.5b (eager decode)"] = {
            k.replace("eager_", ""): v for k, v in results["hymba-1.5b"].items() if k.startswith("decode_eager")}
    for name in ("hymba-1.5b", "hymba-1.5b (eager decode)", *LLAMA_SHAPES):
        row = rows.get(name)
        if row is None:
            continue
        pre = row.get("prefill", {})
        cells = [name, f"{pre['prefill_tok_s']:,.0f}", f"{pre['prefill_mfu']:.1%}"] if "prefill_tok_s" in pre else [name, "-", "-"]
        for b in BATCHES:
            d = row.get(f"decode_b{b}", {})
            if "tok_s" in d:
                cells.append(f"{d['tok_s']:,.0f} ({d['ms_step']:.2f} ms, {d['roofline_frac']:.0%})")
            else:
                cells.append(d.get("skipped", d.get("error", "-"))[:60])
        if any(cell != "-" for cell in cells[1:]):
            body.append("| " + " | ".join(cells) + " |")
    lines = [*header, *body, ""] if body else []
    graphed = results.get("hymba-1.5b", {}).get("prefill_graph", {})
    for name, row in results.items():
        pre = row.get("prefill", {}) if isinstance(row, dict) else {}
        if "prefill_host_s" in pre:
            lines.append(f"prefill 8K, {name}: {pre['prefill_s'] * 1e3:.1f} ms, the host enqueues it in "
                         f"{pre['prefill_host_s'] * 1e3:.1f} ms ({prefill_bound(pre, graphed if name == 'hymba-1.5b' else {})})")
    if "prefill_s" in graphed:
        lines.append(f"prefill 8K, hymba-1.5b replayed as a CUDA graph (no launch cost; not how generate runs): "
                     f"{graphed['prefill_s'] * 1e3:.1f} ms, {graphed['prefill_tok_s']:,.0f} tok/s, "
                     f"MFU {graphed['prefill_mfu']:.1%}")
    elif "error" in graphed:
        lines.append(f"prefill 8K as a CUDA graph: {graphed['error']}")
    for key, checkpointing, cuda_graph in TRAINING:
        train = results.get("hymba-1.5b", {}).get(key, {})
        how = ("checkpointing" if checkpointing else "no checkpointing") + (", CUDA graph" if cuda_graph else "")
        if "train_tok_s" in train:
            lines.append(f"training (b={train['batch']} x 4K, fwd+bwd, bf16 autocast, {how}): "
                         f"{train['train_tok_s']:,.0f} tok/s, MFU {train['train_mfu']:.1%}, "
                         f"{train['train_s'] * 1e3:.0f} ms/step, peak {train['peak_gb']:.1f} GB")
        elif "error" in train:
            lines.append(f"training ({how}): {train['error']}")
    c = results["ceilings"]
    lines.append(f"ceilings: copy {c['copy_bytes_s'] / 1e12:.2f} TB/s, bf16 matmul {c['matmul_flop_s'] / 1e12:.0f} TFLOP/s")
    return "\n".join(lines)


def run_hymba(hy: dict, bandwidth: float, rate: float, profile_dir: Path | None, parts: set[str]) -> None:
    model = hymba_model()
    if "prefill" in parts:
        flops = hymba_forward_flops(model, PROMPT + model.config.num_memory_tokens, 1)
        guarded(hy, "prefill", lambda: prefill(model, model.config.vocab_size, flops, rate))
        guarded(hy, "prefill_graph", lambda: prefill_graphed(model, model.config.vocab_size, flops, rate))
    if "decode" in parts:
        for b in BATCHES:
            guarded(hy, f"decode_b{b}", lambda b=b: hymba_decode(model, b, bandwidth, cuda_graph=True))
            guarded(hy, f"decode_eager_b{b}", lambda b=b: hymba_decode(model, b, bandwidth, cuda_graph=False))
    if not profile_dir:
        return
    with torch.no_grad():
        if "prefill" in parts:
            ids = torch.randint(0, model.config.vocab_size, (1, PROMPT), device="cuda")
            profile(lambda: model(ids, logits_to_keep=1), profile_dir / "hymba_prefill.txt")
        if "decode" in parts:
            for b in (1, 128):
                cache = fill_hymba_cache(model, b, 4, static_shapes=True)
                tokens = torch.zeros(b, dtype=torch.long, device="cuda")
                hy[f"decode_b{b}_eager_kernels"] = profile(
                    lambda t=tokens, c=cache: decode_logits(model, t, c), profile_dir / f"hymba_decode_b{b}.txt")
                del cache


# ----------------------------------------------------------------------------------------------
# the user's path: generate() as a whole
def timed_call(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds of one call (the device synchronised before and after) and its peak GB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 1e9


def generate_row(call: Callable[[int], object], batch: int, prompt: int, tokens: tuple[int, int],
                 step_bytes: int, bandwidth: float) -> dict:
    """Two whole calls with ``tokens`` new tokens: decode step = their difference per token."""
    short, long = tokens
    call(long)  # warm-up: kernels compiled, the graph captured for the longer call (the shorter reuses it)
    t_short, peak_short = timed_call(lambda: call(short))
    t_long, peak_long = timed_call(lambda: call(long))
    step = (t_long - t_short) / (long - short)
    return dict(batch=batch, prompt=prompt, new_tokens=list(tokens), call_s=[t_short, t_long],
                prefill_s=t_short - short * step, ms_step=step * 1e3, tok_s=batch / step,
                roofline_frac=step_bytes / bandwidth / step, peak_gb=max(peak_short, peak_long))


@torch.no_grad()
def hymba_generate(model: HymbaForCausalLM, batch: int, prompt: int, tokens: tuple[int, int], bandwidth: float) -> dict:
    from hymba.inference import cache_bytes

    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device="cuda")
    parts = cache_bytes(model.config, prompt + tokens[1], batch=batch, dtype_bytes=2, ssm_dtype_bytes=4)
    step_bytes = param_bytes(model) + parts["total"] + parts["meta_kv"]
    row = generate_row(lambda n: model.generate(ids, max_new_tokens=n, eos_token_id=[]), batch, prompt, tokens,
                       step_bytes, bandwidth)
    return row


@torch.no_grad()
def llama_generate(model: nn.Module, batch: int, prompt: int, tokens: tuple[int, int], bandwidth: float) -> dict:
    """transformers' generate with one static cache sized for the longer call (reset between
    calls, so the forward that transformers compiles for a static cache is compiled once)."""
    from transformers import StaticCache

    c = model.config
    ids = torch.randint(0, c.vocab_size, (batch, prompt), device="cuda")
    mask = torch.ones_like(ids)
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2 * batch * (prompt + tokens[1])
    step_bytes = param_bytes(model) + kv
    cache = StaticCache(config=c, max_cache_len=prompt + tokens[1])

    def call(n: int):
        cache.reset()
        return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              past_key_values=cache, pad_token_id=0)

    return generate_row(call, batch, prompt, tokens, step_bytes, bandwidth)


def run_generate(results: dict, bandwidth: float, tokens: tuple[int, int], shapes, with_llama: bool) -> None:
    model = hymba_model()
    hy = results.setdefault("hymba-1.5b", {})
    for batch, prompt in shapes:
        guarded(hy, f"generate_b{batch}_p{prompt}", lambda b=batch, p=prompt, m=model: hymba_generate(m, b, p, tokens, bandwidth))
    del model
    torch.cuda.empty_cache()
    if not with_llama:
        return
    row = results.setdefault("llama-3.2-1b", {})
    try:
        llama = llama_model("llama-3.2-1b")
    except Exception as exc:  # noqa: BLE001 - transformers missing or incompatible
        row["generate_error"] = f"{type(exc).__name__}: {exc}"[:300]
        return
    for batch, prompt in shapes:
        guarded(row, f"generate_b{batch}_p{prompt}", lambda b=batch, p=prompt: llama_generate(llama, b, p, tokens, bandwidth))


def generate_table(results: dict, shapes) -> str:
    lines = ["| batch x prompt | hymba-1.5b generate: ms/step (tok/s, roofline) | prefill s | peak GB "
             "| llama-3.2-1b generate (static cache + compile) | prefill s | peak GB |",
             "|---|---|---|---|---|---|---|"]
    for batch, prompt in shapes:
        cells = [f"{batch} x {prompt:,}"]
        for name in ("hymba-1.5b", "llama-3.2-1b"):
            r = results.get(name, {}).get(f"generate_b{batch}_p{prompt}", {})
            if "ms_step" in r:
                cells += [f"{r['ms_step']:.2f} ({r['tok_s']:,.0f}, {r['roofline_frac']:.0%})", f"{r['prefill_s']:.2f}",
                          f"{r['peak_gb']:.1f}"]
            else:
                cells += [(r.get("error") or results.get(name, {}).get("generate_error") or "-")[:70], "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# (result key, activation checkpointing, CUDA graph)
TRAINING = (("train", True, False), ("train_no_checkpointing", False, False),
            ("train_graph", True, True), ("train_no_checkpointing_graph", False, True))


def run_training(hy: dict, rate: float, profile_dir: Path | None, batch: int) -> None:
    """With activation checkpointing (the memory-lean setting) and without it (fits easily at
    batch 1 × 4K on one GPU, and does not recompute the forward), each eager and as a replayed
    CUDA graph (the same kernels without the host's launch time)."""
    for key, checkpointing, cuda_graph in TRAINING:
        def train(checkpointing: bool = checkpointing, cuda_graph: bool = cuda_graph, key: str = key) -> dict:
            result, _, step = hymba_training(rate, batch, checkpointing, cuda_graph)
            if profile_dir and not cuda_graph:
                profile(step, profile_dir / f"hymba_{key}.txt")
            return result

        torch.cuda.reset_peak_memory_stats()
        guarded(hy, key, train)


def run_llama(row: dict, name: str, bandwidth: float, rate: float) -> None:
    try:
        llama = llama_model(name)
    except Exception as exc:  # noqa: BLE001 - transformers missing or incompatible
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        print(name, row, flush=True)
        return
    flops = llama_forward_flops(llama, PROMPT, 1)
    guarded(row, "prefill", lambda: prefill(llama, llama.config.vocab_size, flops, rate))
    for b in BATCHES:
        guarded(row, f"decode_b{b}", lambda b=b: llama_decode(llama, b, bandwidth))


# ----------------------------------------------------------------------------------------------
# quant: decode with int8 / int4 weights
QUANT_BATCHES = (1, 32)
QUANT_WEIGHTS = ("bf16", "int8", "int4")
QUANT_GOALS = {"int8": 0.60, "int4": 0.40}  # batch-1 decode time as a fraction of bf16's


def stored_bytes(model: nn.Module) -> int:
    """Bytes the parameters occupy in memory: a torchao quantized tensor counts its inner tensors
    (int data, scales, zero points), not ``numel`` times the dtype it stands for."""
    from hymba.ops.linear.quantized import is_quantized

    total = 0
    for p in model.parameters():
        if is_quantized(p):
            names, _ = p.__tensor_flatten__()
            total += sum(t.numel() * t.element_size() for t in (getattr(p, n) for n in names)
                         if isinstance(t, torch.Tensor))
        else:
            total += p.numel() * p.element_size()
    return total


def with_stored_weights(row: dict, model: nn.Module, bandwidth: float) -> dict:
    """A :func:`hymba_decode` row with the bytes of a step counting the weights as stored."""
    if "ms_step" not in row:
        return row
    moved = row["bytes_step"] - param_bytes(model) + stored_bytes(model)
    return dict(row, bytes_step=moved, weight_bytes=stored_bytes(model),
                roofline_frac=moved / bandwidth / (row["ms_step"] / 1e3))


def quant_ratios(rows: dict) -> dict:
    """Each quantized row's decode time over bf16's at the same batch and mode (CUDA graph, eager),
    and whether batch 1 with the CUDA graph meets :data:`QUANT_GOALS`."""
    out = {}
    base = rows.get("bf16", {})
    for name in QUANT_WEIGHTS[1:]:
        for key, r in rows.get(name, {}).items():
            ref = base.get(key, {})
            if "ms_step" in r and "ms_step" in ref:
                out[f"{name}_{key}"] = r["ms_step"] / ref["ms_step"]
        ratio = out.get(f"{name}_decode_b1")
        if ratio is not None:
            out[f"{name}_goal_met"] = ratio <= QUANT_GOALS[name]
    return out


def quant_table(results: dict) -> str:
    rows, ratios = results.get("quant", {}), results.get("quant_ratios", {})
    lines = ["| weights | MB | " + " | ".join(f"decode b={b} ms (graph / eager) | vs bf16 | roofline"
                                                for b in QUANT_BATCHES) + " |",
             "|" + " --- |" * (2 + 3 * len(QUANT_BATCHES))]
    for name in QUANT_WEIGHTS:
        row = rows.get(name)
        if row is None:
            continue
        mb = next((r["weight_bytes"] / 1e6 for r in row.values() if "weight_bytes" in r), None)
        cells = [name, "-" if mb is None else f"{mb:,.0f}"]
        for b in QUANT_BATCHES:
            graph, eager = row.get(f"decode_b{b}", {}), row.get(f"decode_eager_b{b}", {})
            if "ms_step" not in graph:
                cells += [graph.get("error", "-")[:60], "-", "-"]
                continue
            eager_ms = f"{eager['ms_step']:.2f}" if "ms_step" in eager else "-"
            ratio = ratios.get(f"{name}_decode_b{b}")
            cells += [f"{graph['ms_step']:.2f} / {eager_ms}", "-" if ratio is None else f"{ratio:.0%}",
                      f"{graph['roofline_frac']:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    for name, goal in QUANT_GOALS.items():
        if f"{name}_goal_met" in ratios:
            met = "met" if ratios[f"{name}_goal_met"] else "NOT met"
            lines.append(f"goal {name}: batch-1 decode <= {goal:.0%} of bf16's: {met} "
                         f"({ratios[f'{name}_decode_b1']:.0%})")
    return "\n".join(lines)


def run_quant(results: dict, bandwidth: float) -> None:
    """Decode steps of Hymba-1.5B with bf16, int8 and int4 weights (one model at a time)."""
    rows = results.setdefault("quant", {})
    for name in QUANT_WEIGHTS:
        row = rows.setdefault(name, {})
        try:
            model = hymba_model()
            if name != "bf16":
                quantize(model, name)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports every failure and goes on
            row["decode_b1"] = dict(error=f"{type(exc).__name__}: {exc}"[:300])
            print(f"quant {name}: {row['decode_b1']}", flush=True)
            continue
        quant_decode(model, row, bandwidth)
        del model
        torch.cuda.empty_cache()
    results["quant_ratios"] = quant_ratios(rows)


def quant_decode(model: HymbaForCausalLM, row: dict, bandwidth: float) -> None:
    """Decode steps at :data:`QUANT_BATCHES` rows, replayed as a CUDA graph and eager, into ``row``."""
    for b in QUANT_BATCHES:
        for key, graph in ((f"decode_b{b}", True), (f"decode_eager_b{b}", False)):
            guarded(row, key, lambda b=b, graph=graph: with_stored_weights(
                hymba_decode(model, b, bandwidth, cuda_graph=graph), model, bandwidth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write all numbers here")
    parser.add_argument("--profile-dir", type=Path, help="write torch.profiler kernel tables here")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure (default: all; 'llama' = the HF peers' prefill, decode and, with "
                             "'generate', generate; 'llama-generate' = only the last)")
    parser.add_argument("--train-batch", type=int, default=1, help="4K sequences per training step (default: 1)")
    parser.add_argument("--gen-tokens", type=int, nargs=2, default=(16, 144), metavar=("SHORT", "LONG"),
                        help="new tokens of the two timed generate calls (default: 16 144)")
    parser.add_argument("--gen-shapes", nargs="+", default=[f"{b}x{p}" for b, p in GENERATE_SHAPES],
                        help="batch x prompt settings of the generate part (default: %(default)s)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("throughput.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    results: dict = dict(environment=environment())
    print(results["environment"], flush=True)
    bandwidth, rate = copy_bandwidth(), matmul_rate()
    torch.cuda.empty_cache()
    results["ceilings"] = dict(copy_bytes_s=bandwidth, matmul_flop_s=rate)
    print(results["ceilings"], flush=True)
    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    hy: dict = results.setdefault("hymba-1.5b", {})
    parts = set(args.parts)
    if parts & {"prefill", "decode"}:
        run_hymba(hy, bandwidth, rate, args.profile_dir, parts)
        torch.cuda.empty_cache()
    if "train" in parts:
        run_training(hy, rate, args.profile_dir, args.train_batch)
        torch.cuda.empty_cache()
    if "llama" in parts:
        for name in LLAMA_SHAPES:
            run_llama(results.setdefault(name, {}), name, bandwidth, rate)
            torch.cuda.empty_cache()
    if "generate" in parts:
        shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.gen_shapes]
        run_generate(results, bandwidth, tuple(args.gen_tokens), shapes,
                     with_llama=bool(parts & {"llama", "llama-generate"}))
        torch.cuda.empty_cache()
    if "quant" in parts:
        run_quant(results, bandwidth)
    print(table(results))
    if "generate" in parts:
        print()
        print(generate_table(results, shapes))
    if "quant" in parts:
        print()
        print(quant_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")

"""Serving benchmark: many requests of mixed lengths against the batching engine, a running server,
or transformers' own continuous batching.

    python benchmarks/serve.py [--preset hymba-1.5b | --model DIR] [--num-requests 256]
        [--rate inf] [--prompt-len 64:1024] [--output-len 16:256] [--max-batch 64]
        [--url http://127.0.0.1:8000] [--compare-hf] [--json out.json]

The workload is fixed by ``--seed``: each request's prompt and output lengths are drawn
log-uniformly between the bounds, its prompt tokens uniformly from the vocabulary, and every
request generates exactly its output length (EOS ignored, greedy). Requests arrive as a Poisson
process of ``--rate`` requests per second, or all at once (``inf``, the default).

Arms (each a row of the table, all on the same workload in the same run):

- ``hymba``: in process, an :class:`~hymba.serving.async_engine.AsyncEngine` over the engine, with
  a model from ``--model`` or ``--preset`` (random weights: the shape is what matters for speed);
- ``server``: with ``--url``, a running OpenAI-compatible server (``hymba serve`` or another)
  streamed through ``/v1/completions`` with token-id prompts (``--url`` replaces the in-process
  arm; ``--served-model`` names the model);
- ``hf-llama``: with ``--compare-hf``, transformers' continuous batching
  (``init_continuous_batching``, the machinery of ``generate_batch`` and ``transformers serve``)
  on a Llama-3.2-1B-shaped model with random weights (needs transformers >= 4.56 and a GPU).

Reported per arm: request throughput, output tokens/s, time to first token and inter-token latency
(p50/p99; from a request's arrival to its first token, and between consecutive tokens), the most
requests decoding at once and, for the engine, that over its slots (peak batch occupancy). A few short requests warm each arm up first
(CUDA graphs, kernels) and are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import platform
import random
import statistics
import threading
import time
from dataclasses import dataclass, field

import torch

from hymba.jsonfile import write_json

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                rope_theta=500000.0, tie_word_embeddings=True)


# -- the workload -------------------------------------------------------------------------------
@dataclass
class Job:
    prompt_len: int
    output_len: int
    arrival: float  # seconds after the start


def bounds(text: str, flag: str) -> tuple[int, int]:
    try:
        low, _, high = text.partition(":")
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise SystemExit(f"{flag} takes MIN:MAX (tokens), got {text!r}") from None
    if not 1 <= lo <= hi:
        raise SystemExit(f"{flag}: need 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return min(hi, int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))


def make_workload(n: int, prompt: tuple[int, int], output: tuple[int, int], rate: float, seed: int) -> list[Job]:
    rng = random.Random(seed)
    jobs, t = [], 0.0
    for _ in range(n):
        if math.isfinite(rate):
            t += rng.expovariate(rate)
        jobs.append(Job(log_uniform(rng, *prompt), log_uniform(rng, *output), t if math.isfinite(rate) else 0.0))
    return jobs


def prompt_ids(jobs: list[Job], vocab: int, seed: int) -> list[list[int]]:
    """Each job's prompt tokens (ids 4.. of ``vocab``: past the usual special tokens)."""
    rng = random.Random(seed + 1)
    return [[rng.randrange(4, vocab) for _ in range(j.prompt_len)] for j in jobs]


# -- measurements -------------------------------------------------------------------------------
@dataclass
class Record:
    start: float  # the request's arrival (perf_counter)
    token_times: list[float] = field(default_factory=list)
    error: str | None = None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summarize(name: str, records: list[Record], peak: float | None, peak_running: int | None,
              extra: dict | None = None) -> dict:
    done = [r for r in records if r.token_times and r.error is None]
    first = min(r.start for r in records)
    last = max((r.token_times[-1] for r in done), default=first)
    duration = max(last - first, 1e-9)
    tokens = sum(len(r.token_times) for r in done)
    ttft = [r.token_times[0] - r.start for r in done]
    itl = [b - a for r in done for a, b in zip(r.token_times, r.token_times[1:])]
    ms = lambda v: None if v is None else 1000 * v  # noqa: E731
    return dict(
        arm=name, requests=len(records), failed=len(records) - len(done), duration_s=duration,
        requests_per_s=len(done) / duration, output_tokens=tokens, output_tokens_per_s=tokens / duration,
        ttft_ms_p50=ms(percentile(ttft, 0.5)), ttft_ms_p99=ms(percentile(ttft, 0.99)),
        itl_ms_p50=ms(percentile(itl, 0.5)), itl_ms_p99=ms(percentile(itl, 0.99)),
        itl_ms_mean=ms(statistics.fmean(itl)) if itl else None, peak_batch_occupancy=peak,
        peak_running=peak_running,
        errors=sorted({r.error for r in records if r.error})[:5], **(extra or {}))


# -- arm: the engine in process -----------------------------------------------------------------
def build_hymba(args):
    from hymba import HymbaConfig, HymbaForCausalLM

    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    if args.model:
        model = HymbaForCausalLM.from_pretrained(args.model, dtype=dtype, device=args.device)
    else:
        torch.manual_seed(0)
        with torch.device(args.device):
            model = HymbaForCausalLM(HymbaConfig.from_preset(args.preset))
        model = model.to(dtype)
    return model.eval()


async def drive_engine(async_engine, prompts: list[list[int]], jobs: list[Job]) -> list[Record]:
    from hymba.serving.engine import SamplingParams

    start = time.perf_counter()
    records: list[Record] = []

    async def one(ids: list[int], job: Job) -> None:
        await asyncio.sleep(max(0.0, start + job.arrival - time.perf_counter()))
        record = Record(time.perf_counter())
        records.append(record)
        params = SamplingParams(max_tokens=job.output_len, temperature=0, ignore_eos=True)
        try:
            async for out in async_engine.generate(ids, params):
                now = time.perf_counter()
                record.token_times += [now] * len(out.new_token_ids)
                if out.finish_reason == "error":
                    record.error = out.error
        except Exception as exc:  # noqa: BLE001 - counted as a failed request
            record.error = f"{type(exc).__name__}: {exc}"

    await asyncio.gather(*(one(ids, job) for ids, job in zip(prompts, jobs)))
    return records


# the engine's own counts over the measured run: where its steps and host time went
ENGINE_COUNTS = ("steps_total", "prefill_steps_total", "decode_steps_total", "prefill_padded_tokens_total",
                 "prompt_tokens_total", "host_prefill_s", "host_decode_s", "host_collect_s", "device_decode_s",
                 "decode_bytes_total")


def run_hymba(args, jobs: list[Job]) -> dict:
    from hymba.serving.async_engine import AsyncEngine
    from hymba.serving.engine import Engine, EngineConfig

    model = build_hymba(args)
    longest = max(j.prompt_len + j.output_len for j in jobs)
    tuning = {k: v for k, v in dict(prefill_chunk_tokens=args.prefill_chunk, prefill_rows=args.prefill_rows).items()
              if v is not None}
    config = EngineConfig(max_batch=args.max_batch, max_model_len=max(longest, args.max_model_len or 0),
                          max_queue=len(jobs) + args.warmup, **tuning)
    core = Engine(model, None, config)
    core.warmup()  # the CUDA graphs of every batch bucket, as `hymba serve` does at start
    engine = AsyncEngine(core)
    vocab = model.config.vocab_size
    try:
        warm = make_workload(args.warmup, (16, 64), (8, 16), math.inf, args.seed + 7)
        asyncio.run(drive_engine(engine, prompt_ids(warm, vocab, args.seed + 7), warm))
        engine.reset_peak()
        before = engine.stats()
        records = asyncio.run(drive_engine(engine, prompt_ids(jobs, vocab, args.seed), jobs))
        stats = engine.stats()
        peak_running = stats["peak_slots_used"]
        peak = peak_running / stats["slots_total"]
        engine_counts = {k: stats[k] - before.get(k, 0) for k in ENGINE_COUNTS}
        if engine_counts["device_decode_s"] > 0:
            # the ceiling throughput.py's rooflines use (that script sits beside this one)
            from throughput import copy_bandwidth

            bandwidth = copy_bandwidth()
            engine_counts["copy_bandwidth"] = bandwidth
            engine_counts["decode_roofline"] = (engine_counts["decode_bytes_total"] / bandwidth
                                                / engine_counts["device_decode_s"])
        extra = dict(model=args.model or args.preset, max_batch=args.max_batch,
                     prefix_hits=stats.get("prefix_hits"), dtype=str(model.dtype).removeprefix("torch."),
                     prefill_chunk_tokens=config.prefill_chunk_tokens, prefill_rows=config.prefill_rows,
                     engine=engine_counts)
    finally:
        engine.close()
    return summarize("hymba", records, peak, peak_running, extra)


# -- arm: a running server ----------------------------------------------------------------------
async def drive_server(url: str, model: str, prompts, jobs, api_key: str | None) -> list[Record]:
    import httpx

    start = time.perf_counter()
    records: list[Record] = []
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=len(jobs) + 8, max_keepalive_connections=len(jobs) + 8)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=httpx.Timeout(600.0),
                                 limits=limits) as client:
        async def one(ids: list[int], job: Job) -> None:
            await asyncio.sleep(max(0.0, start + job.arrival - time.perf_counter()))
            record = Record(time.perf_counter())
            records.append(record)
            body = dict(model=model, prompt=ids, max_tokens=job.output_len, temperature=0, stream=True,
                        logprobs=0, ignore_eos=True)
            try:
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    if response.status_code != 200:
                        record.error = f"HTTP {response.status_code}"
                        return
                    async for line in response.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[6:])
                        if "error" in event:
                            record.error = event["error"].get("message", "error")
                            continue
                        now = time.perf_counter()
                        for choice in event.get("choices", []):
                            count = len((choice.get("logprobs") or {}).get("tokens") or [])
                            record.token_times += [now] * count
            except httpx.HTTPError as exc:
                record.error = f"{type(exc).__name__}: {exc}"

        await asyncio.gather(*(one(ids, job) for ids, job in zip(prompts, jobs)))
    return records


def scrape_peak(url: str) -> tuple[float, int] | None:
    """Peak occupancy and slots in use from a hymba server's /metrics (None for other servers)."""
    import httpx

    try:
        text = httpx.get(url.rstrip("/") + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    values = {}
    for line in text.splitlines():
        if line.startswith(("hymba_batch_slots_used_peak ", "hymba_batch_slots_total ")):
            name, value = line.split()
            values[name] = float(value)
    if len(values) == 2 and values["hymba_batch_slots_total"]:
        used = values["hymba_batch_slots_used_peak"]
        return used / values["hymba_batch_slots_total"], int(used)
    return None


def run_server(args, jobs: list[Job]) -> dict:
    warm = make_workload(args.warmup, (16, 64), (8, 16), math.inf, args.seed + 7)
    asyncio.run(drive_server(args.url, args.served_model, prompt_ids(warm, args.vocab, args.seed + 7), warm,
                             args.api_key))
    records = asyncio.run(drive_server(args.url, args.served_model, prompt_ids(jobs, args.vocab, args.seed),
                                       jobs, args.api_key))
    peak = scrape_peak(args.url)
    return summarize("server", records, peak and peak[0], peak and peak[1], dict(url=args.url, model=args.served_model))


# -- arm: transformers' continuous batching -----------------------------------------------------
def run_hf(args, jobs: list[Job]) -> dict:
    try:
        import transformers
        from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise SystemExit("--compare-hf needs transformers (>= 4.56, with continuous batching): "
                         "pip install transformers") from None
    if not hasattr(LlamaForCausalLM, "init_continuous_batching"):
        raise SystemExit(f"transformers {transformers.__version__} has no continuous batching "
                         "(init_continuous_batching); it needs >= 4.56")
    if not args.device.startswith("cuda"):
        raise SystemExit("--compare-hf runs on a GPU (transformers' paged attention); pass --device cuda")
    config = LlamaConfig(**LLAMA_1B)
    if args.hf_attn:
        config._attn_implementation = args.hf_attn
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16).eval()
    gen = GenerationConfig(max_new_tokens=max(j.output_len for j in jobs), do_sample=False, eos_token_id=-1,
                           pad_token_id=0)
    manager = model.init_continuous_batching(generation_config=gen)
    if hasattr(manager, "warmup"):  # its CUDA graphs captured up front, as generate_batch does
        manager.warmup()
    manager.start()
    try:
        warm = make_workload(args.warmup, (16, 64), (8, 16), math.inf, args.seed + 7)
        drive_hf(manager, prompt_ids(warm, config.vocab_size, args.seed + 7), warm)
        records, peak_running = drive_hf(manager, prompt_ids(jobs, config.vocab_size, args.seed), jobs)
    finally:
        manager.stop(block=True, timeout=60)
    return summarize("hf-llama", records, None, peak_running, dict(model="llama-3.2-1b shape (random)",
                                                                    transformers=transformers.__version__))


def drive_hf(manager, prompts: list[list[int]], jobs: list[Job]) -> tuple[list[Record], int]:
    """Submit at the arrival times from this thread; a reader thread timestamps every new token
    and samples how many requests the scheduler runs at once (its memory, not slots, bounds them)."""
    records: dict[str, Record] = {}
    peak = [0]
    counts: dict[str, int] = {}
    finished = threading.Event()
    lock = threading.Lock()
    total = len(jobs)

    def reader() -> None:
        done = 0
        deadline = time.monotonic() + 3600
        while done < total and time.monotonic() < deadline:
            out = manager.get_result(timeout=0.1)
            scheduler = getattr(getattr(manager, "batch_processor", None), "scheduler", None)
            peak[0] = max(peak[0], len(getattr(scheduler, "active_requests", ())))
            if out is None:
                continue
            now = time.perf_counter()
            with lock:
                record = records.get(out.request_id)
            if record is None:
                continue
            n = len(out.generated_tokens)
            record.token_times += [now] * max(0, n - counts.get(out.request_id, 0))
            counts[out.request_id] = max(n, counts.get(out.request_id, 0))
            status = str(getattr(out, "status", ""))
            if getattr(out, "error", None):
                record.error = str(out.error)
            if (out.is_finished() if hasattr(out, "is_finished") else "FINISHED" in status) or "FAILED" in status:
                done += 1
        finished.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    start = time.perf_counter()
    for i, (ids, job) in enumerate(zip(prompts, jobs)):
        delay = start + job.arrival - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        rid = f"bench-{i}-{start}"
        with lock:
            records[rid] = Record(time.perf_counter())
        manager.add_request(ids, request_id=rid, max_new_tokens=job.output_len, streaming=True)
    finished.wait()
    return list(records.values()), peak[0]


# -- report -------------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    head = (f"{'arm':10} {'reqs':>5} {'req/s':>7} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} "
            f"{'ITL p50':>8} {'ITL p99':>8} {'peak run':>8} {'peak occ':>8} {'time s':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['arm']:10} {r['requests']:>5} {f(r['requests_per_s'], '.2f'):>7} "
                     f"{f(r['output_tokens_per_s'], '.0f'):>10} {f(r['ttft_ms_p50'], '.1f'):>9} "
                     f"{f(r['ttft_ms_p99'], '.1f'):>9} {f(r['itl_ms_p50'], '.2f'):>8} {f(r['itl_ms_p99'], '.2f'):>8} "
                     f"{f(r['peak_running'], 'd'):>8} {f(r['peak_batch_occupancy'], '.2f'):>8} "
                     f"{f(r['duration_s'], '.1f'):>7}")
        if r["failed"]:
            lines.append(f"{'':10} {r['failed']} failed: {'; '.join(r['errors'])}")
    for r in rows:
        e = r.get("engine")
        if e:
            pad = e["prefill_padded_tokens_total"] / max(e["prompt_tokens_total"], 1)
            lines.append(f"{r['arm']}: {e['steps_total']} steps ({e['prefill_steps_total']} with a prefill, "
                         f"{e['decode_steps_total']} with a decode step; {pad:.2f} prefill tokens computed per "
                         f"prompt token); engine-thread seconds: prefill {e['host_prefill_s']:.2f}, decode "
                         f"{e['host_decode_s']:.2f}, reading tokens {e['host_collect_s']:.2f}")
            if e.get("decode_roofline"):
                ms = 1000 * e["device_decode_s"] / e["decode_steps_total"]
                lines.append(f"{r['arm']}: decode steps on the device {e['device_decode_s']:.2f} s ({ms:.2f} ms a "
                             f"step), {e['decode_roofline']:.0%} of the roofline (copy "
                             f"{e['copy_bandwidth'] / 1e12:.2f} TB/s)")
    return "\n".join(lines) + ("\n(latencies in ms; peak run = most requests decoding at once; "
                               "occupancy = that over the engine's slots)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="hymba-1.5b", help="model shape with random weights (default hymba-1.5b)")
    src.add_argument("--model", metavar="DIR", help="a checkpoint folder instead of --preset")
    p.add_argument("--url", help="benchmark a running server instead of the in-process engine")
    p.add_argument("--served-model", default="hymba", help="the model name the server expects (with --url)")
    p.add_argument("--api-key", default=None, help="bearer key for --url")
    p.add_argument("--vocab", type=int, default=32001, help="prompt token ids below this (with --url)")
    p.add_argument("--num-requests", type=int, default=256)
    p.add_argument("--rate", type=float, default=math.inf, help="requests/s (Poisson); inf: all at once")
    p.add_argument("--prompt-len", default="64:1024", help="MIN:MAX prompt tokens (log-uniform)")
    p.add_argument("--output-len", default="16:256", help="MIN:MAX output tokens (log-uniform)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batch", type=int, default=64, help="the engine's decode slots")
    p.add_argument("--max-model-len", type=int, default=None, help="the engine's max_model_len (default: fits the workload)")
    p.add_argument("--prefill-chunk", type=int, default=None,
                   help="the engine's prefill_chunk_tokens (default: the engine's)")
    p.add_argument("--prefill-rows", type=int, default=None, help="the engine's prefill_rows (default: the engine's)")
    p.add_argument("--warmup", type=int, default=8, help="short requests run first and not counted")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    p.add_argument("--compare-hf", action="store_true", help="add transformers' continuous batching (Llama-3.2-1B shape)")
    p.add_argument("--hf-attn", default=None, help="attn_implementation for the transformers arm (default: its own)")
    p.add_argument("--json", metavar="FILE", help="write the results here")
    args = p.parse_args(argv)
    if args.num_requests < 1 or args.rate <= 0 or args.max_batch < 1 or args.warmup < 0:
        p.error("--num-requests, --rate and --max-batch must be positive, --warmup >= 0")
    args.prompt_bounds = bounds(args.prompt_len, "--prompt-len")
    args.output_bounds = bounds(args.output_len, "--output-len")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    jobs = make_workload(args.num_requests, args.prompt_bounds, args.output_bounds, args.rate, args.seed)
    rows = [run_server(args, jobs) if args.url else run_hymba(args, jobs)]
    if args.compare_hf:
        torch.cuda.empty_cache()
        rows.append(run_hf(args, jobs))
    print(table(rows))
    if args.json:
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
        write_json(args.json, dict(
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), device=device,
            torch=torch.__version__, workload=dict(
                num_requests=args.num_requests, rate=args.rate if math.isfinite(args.rate) else "inf",
                prompt_len=args.prompt_len, output_len=args.output_len, seed=args.seed,
                prompt_tokens=sum(j.prompt_len for j in jobs), output_tokens=sum(j.output_len for j in jobs)),
            results=rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

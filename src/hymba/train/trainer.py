"""The training loop: from scratch, fine-tuning (``init_from``) or resuming, with exact resume.

``train(TrainArgs(...))`` returns a summary dict. The run folder ``args.out`` receives numbered
checkpoints (:mod:`.checkpointing`), ``metrics.jsonl`` (one JSON object per logged step) and the
final model in ``final/`` (released format + tokenizer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..checkpoint import CheckpointError
from ..config import HymbaConfig, numbers_from_text
from ..devices import resolve_device
from ..model import HymbaForCausalLM
from ..tokenizer import HymbaTokenizer, load_tokenizer
from . import checkpointing as ckpt
from . import distributed
from .bpe import BUNDLED_CORPUS, bundled_data_dir
from .data import (
    BatchStream,
    PackedData,
    load_rows,
    split_labels,
    unigram_entropy,
)
from .graph import TrainingGraph
from .metrics import MetricsLog
from .optim import Schedule, build_optimizer, set_lr


class TrainError(ValueError):
    """A training run cannot start or had to stop; the message says why."""


@dataclass
class TrainArgs:
    """Everything a run depends on. ``data`` empty: the bundled corpus; ``tokenizer`` None: the
    ``init_from`` checkpoint's tokenizer, else the bundled one. ``model`` overrides config fields
    of ``preset`` (from-scratch runs). ``warmup`` below 1 is a fraction of ``max_steps``."""

    out: str = "hymba-run"
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    resume: str | None = None
    overwrite: bool = False
    data: list[str] = field(default_factory=list)
    tokenizer: str | None = None
    max_steps: int = 160
    seq_len: int = 128
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr: float = 1e-5
    schedule: str = "wsd"
    warmup: float = 0.01
    decay_fraction: float = 0.2
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    val_fraction: float = 0.02
    eval_every: int = 40
    eval_batches: int = 8
    save_every: int = 80
    keep_checkpoints: int = 2
    log_every: int = 1
    device: str = "auto"
    dtype: str | None = None
    seed: int = 0
    gradient_checkpointing: bool = False
    threads: int | None = None
    tensorboard: bool = False
    compile: bool = False
    cuda_graph: bool = False
    sample_prompt: str = "To be, or not to be"
    sample_tokens: int = 60
    progress: bool = True

    def __post_init__(self) -> None:  # paths may be given as os.PathLike, data as any sequence
        for name in ("out", "init_from", "resume", "tokenizer"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.data, (str, os.PathLike)):
            self.data = [self.data]
        if isinstance(self.data, (list, tuple)):
            self.data = [os.fspath(p) if isinstance(p, os.PathLike) else p for p in self.data]

    def validate(self) -> None:
        """Raise :class:`TrainError` naming the first setting of the wrong type or range."""

        def check(names: tuple[str, ...], ok, what: str) -> None:
            for name in names:
                value = getattr(self, name)
                if not ok(value):
                    raise TrainError(f"{name} must be {what}, got {value!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        check(("max_steps", "seq_len", "batch_size", "grad_accum", "eval_every", "eval_batches",
               "save_every", "log_every"), lambda v: is_int(v) and v >= 1, "a positive integer")
        check(("keep_checkpoints", "sample_tokens", "seed"), lambda v: is_int(v) and v >= 0,
              "a non-negative integer")
        check(("threads",), lambda v: v is None or (is_int(v) and v >= 1), "a positive integer")
        check(("lr",), lambda v: is_number(v) and v > 0, "a positive number")
        check(("min_lr", "warmup", "weight_decay", "grad_clip"), lambda v: is_number(v) and v >= 0,
              "a non-negative number")
        check(("decay_fraction",), lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
        check(("val_fraction",), lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")
        check(("overwrite", "gradient_checkpointing", "tensorboard", "compile", "cuda_graph", "progress"),
              lambda v: isinstance(v, bool), "true or false")
        check(("out", "preset", "sample_prompt"), lambda v: isinstance(v, str), "a string")
        check(("device",), lambda v: v is None or isinstance(v, str), "a device name")
        check(("init_from", "resume", "tokenizer"), lambda v: v is None or isinstance(v, str), "a path")
        check(("data",), lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
              "a list of paths")
        check(("model",), lambda v: isinstance(v, dict), "a mapping of config fields")
        if self.schedule not in ("wsd", "cosine"):
            raise TrainError(f"schedule must be 'wsd' or 'cosine', got {self.schedule!r}")
        if self.dtype not in (None, "float32", "bfloat16"):
            raise TrainError(f"dtype must be float32 or bfloat16 (autocast), got {self.dtype!r}")
        if self.init_from and self.resume:
            raise TrainError("use either init_from (start a fine-tune) or resume (continue a run)")
        if self.cuda_graph and self.compile:
            raise TrainError("use either cuda_graph or compile, not both")


# ------------------------------------------------------------------------------------------------
# Setup


def _check_out_dir(args: TrainArgs) -> None:
    """Refuse to clobber an existing run and fail early on a folder we cannot write."""
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise TrainError(f"output path {out} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not (args.resume or args.overwrite):
        raise TrainError(f"output folder {out} already exists and is not empty; "
                         "pass --resume to continue it or --overwrite to replace it")
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise TrainError(f"output folder {out} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TrainError(f"output folder {out} is not writable")


def _resolve_device(name: str | None) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise TrainError(str(exc)) from None


def _load_tokenizer(args: TrainArgs, resume_dir: str | None) -> HymbaTokenizer:
    folder = resume_dir or args.tokenizer or args.init_from or bundled_data_dir()
    return load_tokenizer(folder)


def _model_config(args: TrainArgs, tokenizer: HymbaTokenizer, resume_dir: str | None) -> HymbaConfig:
    if resume_dir or args.init_from:
        config = HymbaConfig.load(resume_dir or args.init_from)
    else:
        ids = {k: v for k, v in (("bos_token_id", tokenizer.bos_token_id),
                                 ("eos_token_id", tokenizer.eos_token_id),
                                 ("pad_token_id", tokenizer.pad_token_id)) if v is not None}
        model = numbers_from_text(args.model, HymbaConfig)  # a YAML file's "1e6" is text
        overrides = {"vocab_size": len(tokenizer), **ids, "torch_dtype": "float32", **model}
        config = HymbaConfig.from_preset(args.preset, **overrides)
    if len(tokenizer) > config.vocab_size:
        raise TrainError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{config.vocab_size}")
    if args.seq_len > config.max_position_embeddings:
        raise TrainError(f"seq_len {args.seq_len} is above the model's max_position_embeddings "
                         f"{config.max_position_embeddings}")
    return config


def _load_data(args: TrainArgs, tokenizer: HymbaTokenizer) -> PackedData:
    paths = args.data or [os.path.join(bundled_data_dir(), BUNDLED_CORPUS)]
    return load_rows(paths, tokenizer, args.seq_len, args.val_fraction)


def _prepare_out_dir(args: TrainArgs) -> str:
    out = os.path.abspath(args.out)
    if args.overwrite and not args.resume and os.path.isdir(out):
        for _, path in ckpt.list_checkpoints(out):
            shutil.rmtree(path)
        shutil.rmtree(os.path.join(out, "final"), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, "metrics.jsonl"))
    os.makedirs(out, exist_ok=True)
    ckpt.remove_stale_temporaries(out)
    return out


def _trim_metrics(path: str, last_step: int) -> None:
    """Drop log lines of steps after the checkpoint we resume from (they will be redone)."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as fh:
        kept = [line for line in fh if line.strip() and json.loads(line).get("step", 0) <= last_step]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(kept)


# ------------------------------------------------------------------------------------------------
# The loop


@torch.no_grad()
def evaluate(model: HymbaForCausalLM, rows: torch.Tensor, batch_size: int, max_batches: int,
             device: torch.device, autocast: contextlib.AbstractContextManager) -> float:
    """Mean next-token loss over the trained-on tokens of the first ``max_batches`` batches of
    ``rows`` (no-loss tokens negated, see :func:`split_labels`)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, min(len(rows), batch_size * max_batches), batch_size):
        x, labels = (t.to(device) for t in split_labels(rows[start : start + batch_size]))
        n = int((labels[:, 1:] != -100).sum())
        if n:
            with autocast:
                loss = model(x, labels=labels).loss
            total += float(loss) * n
            count += n
    model.train(was_training)
    return total / count if count else float("nan")


def _peak_memory_gib(device: torch.device) -> float | None:
    """Peak CUDA memory of this process, or its peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def _sample(model: HymbaForCausalLM, tokenizer: HymbaTokenizer, prompt: str, tokens: int, seed: int) -> str:
    ids = tokenizer.encode(prompt)
    if not ids:
        return ""
    model.eval()
    out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=tokens,
                         do_sample=True, temperature=0.8, top_k=40, seed=seed)
    return tokenizer.decode(out[0].tolist())


def _check_sample_length(args: TrainArgs, tokenizer: HymbaTokenizer, config: HymbaConfig) -> None:
    """Fail before training, not after it, when the closing sample cannot be generated."""
    if args.sample_tokens:
        length = len(tokenizer.encode(args.sample_prompt)) + args.sample_tokens
        if length > config.max_position_embeddings:
            raise TrainError(f"sample_prompt + sample_tokens = {length} tokens exceeds the model's "
                             f"maximum of {config.max_position_embeddings} (max_position_embeddings)")


def train(args: TrainArgs) -> dict[str, Any]:
    """Run training as ``args`` says; return a summary (losses, baseline, speed, paths, sample).

    Under ``torchrun`` every rank calls this; ``batch_size`` is then the global micro-batch, split
    evenly over the ranks, and only rank 0 writes files (its summary has the sample)."""
    args.validate()
    for name in ("init_from", "tokenizer"):
        folder = getattr(args, name)
        if folder and not os.path.isdir(folder):
            raise TrainError(f"{name} folder {folder} does not exist")
    if args.init_from and args.model:
        raise TrainError("model overrides shape a from-scratch run; init_from keeps its checkpoint's config")
    _check_out_dir(args)
    try:
        resume_dir = ckpt.resolve_resume(args.resume) if args.resume else None
        if resume_dir:
            ckpt.check_training_state(resume_dir)  # a damaged file fails now, not after the setup
    except CheckpointError as exc:
        raise TrainError(str(exc)) from None
    device = _resolve_device(args.device)
    tokenizer = _load_tokenizer(args, resume_dir)
    config = _model_config(args, tokenizer, resume_dir)
    _check_sample_length(args, tokenizer, config)
    data = _load_data(args, tokenizer)
    world = distributed.setup(device.type)
    try:
        if world.enabled and args.batch_size % world.world_size:
            raise TrainError(f"batch_size {args.batch_size} is not divisible by {world.world_size} processes")
        if world.enabled and device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(device)
        world.barrier()  # every rank has checked the output folder before rank 0 creates it
        out = _prepare_out_dir(args) if world.is_main else os.path.abspath(args.out)
        world.barrier()
        return _run(args, world, device, tokenizer, config, data, out, resume_dir)
    finally:
        world.close()


def _run(args: TrainArgs, world: distributed.DistInfo, device: torch.device, tokenizer: HymbaTokenizer,
         config: HymbaConfig, data: PackedData, out: str, resume_dir: str | None) -> dict[str, Any]:
    if device.type == "cpu":
        threads = args.threads or (1 if config.hidden_size <= 256 else None)
        if threads:
            torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    source = resume_dir or args.init_from
    if source:
        model = HymbaForCausalLM.from_pretrained(source, dtype=torch.float32, device=device)
    else:
        model = HymbaForCausalLM(config).to(device)
    model.train()
    model.gradient_checkpointing_enable(args.gradient_checkpointing)
    wrapped: torch.nn.Module = model
    if world.enabled:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    use_bf16 = (args.dtype or ("bfloat16" if device.type == "cuda" else "float32")) == "bfloat16"
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16
                else contextlib.nullcontext())
    if args.compile:
        wrapped = torch.compile(wrapped)
    graph = None
    if args.cuda_graph:
        if device.type != "cuda" or world.enabled:
            raise TrainError("cuda_graph needs one CUDA device (no CPU, no DDP)")
        graph = TrainingGraph(model, torch.bfloat16 if use_bf16 else None, 1.0 / args.grad_accum)
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    schedule = Schedule(args.schedule, args.lr, args.max_steps, args.warmup, args.min_lr,
                        args.decay_fraction)

    step = 0
    metrics_path = os.path.join(out, "metrics.jsonl")
    if resume_dir:
        step = int(ckpt.load_training_state(resume_dir, optimizer)["step"])
        if world.is_main:
            _trim_metrics(metrics_path, step)
    if step >= args.max_steps:
        raise TrainError(f"the checkpoint is at step {step}; raise max_steps above it to train more")
    stream = BatchStream(data.train, args.batch_size, args.seed, world.rank, world.world_size)
    saved_args = dataclasses.asdict(args)  # paths made absolute so a resume works from anywhere
    saved_args["data"] = [os.path.abspath(p) for p in args.data]
    for key in ("tokenizer", "init_from"):
        saved_args[key] = saved_args[key] and os.path.abspath(saved_args[key])
    run_state = {"args": saved_args, "data_position": 0}
    baseline = unigram_entropy(data.val, config.vocab_size)

    from tqdm.auto import tqdm

    bar = tqdm(total=args.max_steps, initial=step, disable=not (args.progress and world.is_main),
               unit="step", dynamic_ncols=True)
    params = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []
    val_loss = None
    tokens_per_step = args.batch_size * args.grad_accum * args.seq_len
    start_time = time.perf_counter()
    start_step = step
    try:
        log = MetricsLog(out, args.tensorboard) if world.is_main else None
    except ImportError as exc:
        raise TrainError(str(exc)) from None
    try:
        while step < args.max_steps:
            t0 = time.perf_counter()
            lr = schedule(step)
            set_lr(optimizer, lr)
            loss_sum, counted = 0.0, 0
            for micro in range(args.grad_accum):
                x, labels = split_labels(stream.batch(step * args.grad_accum + micro))
                has_targets = bool((labels[:, 1:] != -100).any())  # a chat row may hold only prompt
                if graph is not None:  # a batch without targets adds a zero gradient: skipped
                    if has_targets:  # the first one writes the gradients, the others add to them
                        loss_sum += float(graph(x, labels, accumulate=counted > 0))
                        counted += 1
                    continue
                x, labels = x.to(device), labels.to(device)
                sync = not world.enabled or micro == args.grad_accum - 1
                with autocast, (contextlib.nullcontext() if sync else wrapped.no_sync()):
                    result = wrapped(x, labels=labels if has_targets else None)
                    loss = result.loss if has_targets else result.logits.sum() * 0.0
                    (loss / args.grad_accum).backward()
                loss_sum += float(loss.detach())
                counted += has_targets
            if graph is not None and counted == 0:  # no micro-step wrote this step's gradients:
                for p in params:  # zeros, as the eager path's zero-loss backward gives
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    else:
                        p.grad.zero_()
            loss_value = world.mean(loss_sum / max(counted, 1), device)
            if not math.isfinite(loss_value):
                last = ckpt.list_checkpoints(out)
                kept = f"the last good checkpoint is {last[-1][1]}" if last else "no checkpoint was written yet"
                raise TrainError(f"the loss is {loss_value} at step {step + 1}; training stopped "
                                 f"({kept}). Lower --lr or check the data.")
            clip = args.grad_clip if args.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            optimizer.step()
            if graph is None:  # a graph's next step writes the gradients
                optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(loss_value)
            tok_s = tokens_per_step / (time.perf_counter() - t0)
            record: dict[str, Any] = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                                      "tokens_per_s": tok_s, "tokens": step * tokens_per_step}
            memory = _peak_memory_gib(device)
            if memory is not None:
                record["max_memory_gib"] = memory
            if step % args.eval_every == 0 or step == args.max_steps:
                val_loss = evaluate(model, data.val, args.batch_size, args.eval_batches, device, autocast)
                record["val_loss"] = val_loss
                if world.is_main:
                    bar.write(f"step {step}: train loss {loss_value:.4f}, val loss {val_loss:.4f} "
                              f"(unigram baseline {baseline:.4f})")
            if log and (step % args.log_every == 0 or "val_loss" in record):
                log.write(record)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}")
            bar.update(1)
            if step % args.save_every == 0 or step == args.max_steps:
                if world.is_main:
                    run_state["data_position"] = step * args.grad_accum
                    ckpt.save_checkpoint(out, step, model, tokenizer, optimizer, run_state,
                                         args.keep_checkpoints)
                world.barrier()
    finally:
        bar.close()
        if log:
            log.close()
    wall = time.perf_counter() - start_time

    final = os.path.join(out, "final")
    sample = ""
    if world.is_main:
        tmp = os.path.join(out, ".tmp-final")
        shutil.rmtree(tmp, ignore_errors=True)
        ckpt.save_model_folder(tmp, model, tokenizer)
        ckpt.publish(tmp, final)
        if args.sample_tokens > 0:
            sample = _sample(model, tokenizer, args.sample_prompt, args.sample_tokens, args.seed)
    world.barrier()
    tail = losses[-10:]
    return {
        "out": out, "final": final, "steps": step, "trained_steps": step - start_step,
        "train_loss": sum(tail) / len(tail), "losses": losses, "val_loss": val_loss,
        "unigram_entropy": baseline, "parameters": model.num_parameters(),
        "train_tokens": len(data.train) * args.seq_len, "val_tokens": len(data.val) * args.seq_len,
        "tokens_per_s": (step - start_step) * tokens_per_step / wall, "wall_s": wall,
        "sample": sample, "world_size": world.world_size,
    }


__all__ = ["TrainArgs", "TrainError", "train", "evaluate"]

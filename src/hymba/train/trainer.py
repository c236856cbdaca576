"""The training loop: from scratch, fine-tuning (``init_from``) or resuming, with exact resume.

``train(TrainArgs(...))`` returns a summary dict. The run folder ``args.out`` receives numbered
checkpoints (:mod:`.checkpointing`), ``metrics.jsonl`` (one JSON object per logged step) and the
final model in ``final/`` (released format + tokenizer). The optimizer step itself is
:class:`.step.TrainStep`; Ctrl-C stops a run after a step, saved (:class:`.args.TrainInterrupted`).

Under ``torchrun`` (one node or several) the model is replicated (DDP) or sharded (FSDP2), as
``args.parallel`` says or :func:`.distributed.choose_parallel` picks; an FSDP run's numbered
checkpoints are sharded (every rank writes its part, :func:`.checkpointing.save_sharded_checkpoint`)
and its ``final/`` is gathered on rank 0. Any checkpoint resumes on any number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from ..checkpoint import CheckpointError
from ..config import HymbaConfig, numbers_from_text
from ..devices import resolve_device
from ..model import HymbaForCausalLM, count_parameters
from ..tokenizer import HymbaTokenizer, load_tokenizer
from . import checkpointing as ckpt
from . import distributed
from .args import TrainArgs, TrainError, TrainInterrupted
from .bpe import BUNDLED_CORPUS, bundled_data_dir
from .data import (
    BatchStream,
    PackedData,
    load_rows,
    split_labels,
    unigram_entropy,
)
from .lora import LoraError, LoraSettings, add_lora, is_adapter_folder, load_lora, lora_settings_of
from .metrics import MetricsLog
from .optim import Schedule, continue_schedule
from .step import TrainStep

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


def _model_config(args: TrainArgs, tokenizer: HymbaTokenizer, source: str | None) -> HymbaConfig:
    """The config of the model a run trains: that of ``source`` (the folder its weights come
    from), else ``args.preset`` with ``args.model``'s overrides."""
    if source:
        config = HymbaConfig.load(source)
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


def _lora_plan(args: TrainArgs, resume_dir: str | None) -> tuple[LoraSettings | None, str | None]:
    """The run's LoRA settings (None: it trains the model's weights) and the folder its model
    weights come from: ``init_from``, the checkpoint resumed, or for a resumed LoRA run (its
    checkpoints hold the adapter only) the base model its trainer state names."""
    try:
        if resume_dir is None:
            return (LoraSettings.parse(args.lora) if args.lora is not None else None), args.init_from
        if not is_adapter_folder(resume_dir):
            if args.lora is not None:
                raise TrainError(f"{resume_dir} holds a whole model, not a LoRA adapter: start a LoRA run "
                                 "from it with init_from instead of resume")
            return None, resume_dir
        saved = lora_settings_of(resume_dir)
        if args.lora is not None and LoraSettings.parse(args.lora) != saved:
            raise TrainError(f"lora settings {args.lora!r} differ from those of the resumed adapter "
                             f"{saved.to_dict()}")
    except LoraError as exc:
        raise TrainError(str(exc)) from None
    base = ckpt.read_trainer_state(resume_dir).get("args", {}).get("init_from")
    if not (isinstance(base, str) and os.path.isdir(base)):
        raise TrainError(f"the base model of the LoRA run in {resume_dir} ({base}) is not a folder any more")
    return saved, base


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
        lora, model_dir = _lora_plan(args, resume_dir)
    except CheckpointError as exc:
        raise TrainError(str(exc)) from None
    device = _resolve_device(args.device)
    tokenizer = _load_tokenizer(args, resume_dir)
    config = _model_config(args, tokenizer, model_dir)
    _check_sample_length(args, tokenizer, config)
    data = _load_data(args, tokenizer)
    world = distributed.setup(device.type)
    try:
        if world.enabled and args.batch_size % world.world_size:
            raise TrainError(f"batch_size {args.batch_size} is not divisible by {world.world_size} processes")
        if world.enabled and device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(device)
        parallel = _choose_parallel(args, world, config, device, lora is not None)
        world.barrier()  # every rank has checked the output folder before rank 0 creates it
        out = _prepare_out_dir(args) if world.is_main else os.path.abspath(args.out)
        world.barrier()
        run = _Run(args, world, device, tokenizer, config, data, out, resume_dir, model_dir, lora, parallel)
        run.setup()
        run.loop()
        return run.finish()
    finally:
        world.close()


def _choose_parallel(args: TrainArgs, world: distributed.DistInfo, config: HymbaConfig,
                     device: torch.device, lora: bool = False) -> str:
    """DDP or FSDP for a ``torchrun`` run (rank 0 prints which and why); "none" for one process.
    A LoRA run replicates the model: its gradients and optimizer state are the small adapters'."""
    if lora and args.parallel == "fsdp":
        raise TrainError("lora trains small adapters on a replicated model: use parallel 'ddp' (or 'auto'), "
                         "not 'fsdp'")
    if not world.enabled:
        if args.parallel != "auto" and world.is_main:
            print(f"parallel: one process, nothing to {'shard' if args.parallel == 'fsdp' else 'replicate'} "
                  f"(--parallel {args.parallel} applies under torchrun)", flush=True)
        return "none"
    free = None
    if args.parallel == "auto" and device.type == "cuda" and not lora:  # every rank must make the same choice:
        free = world.minimum(torch.cuda.mem_get_info(device)[0], device)  # the fullest GPU's
    if lora:
        parallel, why = "ddp", "LoRA: only the adapters have gradients and optimizer state"
    else:
        parallel, why = distributed.choose_parallel(args.parallel, count_parameters(config), device, free)
    if world.is_main:
        what = "FSDP2 (sharded)" if parallel == "fsdp" else "DDP (replicated)"
        offload = ", parameters and optimizer state offloaded to the CPU" if args.cpu_offload else ""
        print(f"parallel: {what} over {world.world_size} processes{offload} ({why})", flush=True)
    return parallel


def _checkpoint_schedule(state: dict[str, Any], planned: Schedule, path: str) -> Schedule:
    """The schedule checkpoint ``path`` was trained under: its saved settings and the span its
    trainer state records (a checkpoint from before that record: 0 .. its ``max_steps``)."""
    saved = state.get("args", {})
    span = state.get("schedule") or {}
    try:
        return Schedule(saved.get("schedule", planned.kind), float(saved.get("lr", planned.lr)),
                        int(span.get("total_steps", saved.get("max_steps", planned.total_steps))),
                        float(span.get("warmup", saved.get("warmup", planned.warmup))),
                        float(saved.get("min_lr", planned.min_lr)),
                        float(saved.get("decay_fraction", planned.decay_fraction)),
                        int(span.get("start", 0)))
    except (TypeError, ValueError, AttributeError) as exc:
        raise TrainError(f"the learning-rate schedule saved in {path} is malformed: {exc}") from None


def _schedule_note(previous: Schedule, schedule: Schedule, step: int, args: TrainArgs) -> str | None:
    """One line telling what a resume did to the learning-rate schedule, where it changed."""
    if schedule.start != previous.start:
        return (f"learning rate: a new {schedule.kind} phase from step {step} to {schedule.total_steps} "
                f"(--rewarm)")
    if schedule.total_steps < args.max_steps:
        return (f"learning rate: the schedule had begun its decay at step {previous.decay_start}; it "
                f"goes on, and steps {schedule.total_steps + 1}..{args.max_steps} train at min_lr "
                f"{schedule.min_lr:g} (--rewarm starts a new warmup-stable-decay phase instead)")
    if schedule.total_steps != previous.total_steps:
        return (f"learning rate: the decay now ends at step {schedule.total_steps} "
                f"(was {previous.total_steps})")
    return None


class _Run:
    """One run of :func:`train` once its settings are checked: :meth:`setup` builds the model
    and the step (or restores both from a checkpoint), :meth:`loop` trains, logs, evaluates and
    saves numbered checkpoints, :meth:`finish` saves the final model and returns the summary.

    ``model_dir``: the folder the model's weights come from (None: a new model); ``lora``: train
    LoRA adapters on it (PEFT) instead, which checkpoints and ``final/`` then hold."""

    def __init__(self, args: TrainArgs, world: distributed.DistInfo, device: torch.device,
                 tokenizer: HymbaTokenizer, config: HymbaConfig, data: PackedData, out: str,
                 resume_dir: str | None, model_dir: str | None, lora: LoraSettings | None,
                 parallel: str = "none") -> None:
        self.args, self.world, self.device, self.tokenizer = args, world, device, tokenizer
        self.parallel = parallel
        self.config, self.data, self.out, self.resume_dir = config, data, out, resume_dir
        self.model_dir, self.lora = model_dir, lora
        self.metrics_path = os.path.join(out, "metrics.jsonl")
        self.tokens_per_step = args.batch_size * args.grad_accum * args.seq_len
        self.losses: list[float] = []
        self.val_loss: float | None = None

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        args, device = self.args, self.device
        if device.type == "cpu":
            threads = args.threads or (1 if self.config.hidden_size <= 256 else None)
            if threads:
                torch.set_num_threads(threads)
        torch.manual_seed(args.seed)
        # FSDP moves each block to the device as it shards it: the whole model never is on one GPU
        home = torch.device("cpu") if self.parallel == "fsdp" else device
        if self.model_dir and not ckpt.is_sharded(self.model_dir):
            self.model = HymbaForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32, device=home)
        else:  # a sharded checkpoint to resume is loaded with its optimizer state, below
            self.model = HymbaForCausalLM(self.config).to(home)
            if self.model_dir and self.model_dir != self.resume_dir:  # a fine-tune's start: weights only
                try:
                    ckpt.load_sharded_weights(self.model_dir, self.model)
                except CheckpointError as exc:
                    raise TrainError(str(exc)) from None
        # what checkpoints save: the model, or the PEFT model that holds its adapters (these wrap
        # the model's projections in place: self.model runs them, only they train)
        self.saved: Any = self.model
        if self.lora is not None:
            try:
                if self.resume_dir:
                    self.saved = load_lora(self.model, self.resume_dir, trainable=True)
                else:
                    self.saved = add_lora(self.model, self.lora, base=os.path.abspath(self.model_dir))
            except LoraError as exc:
                raise TrainError(str(exc)) from None
        self.model.train()
        self.model.gradient_checkpointing_enable(args.gradient_checkpointing)
        self.runner = TrainStep(self.model, args, self.world, self.parallel, device)
        self.step = 0
        if self.resume_dir:
            try:
                state = ckpt.load_training_state(self.resume_dir, self.runner.optimizer, self.model)
            except CheckpointError as exc:
                raise TrainError(str(exc)) from None
            self.step = int(state["step"])
            if self.step >= args.max_steps:
                raise TrainError(f"the checkpoint is at step {self.step}; raise max_steps above it to train more")
            planned = self.runner.schedule
            previous = _checkpoint_schedule(state, planned, self.resume_dir)
            self.runner.schedule = continue_schedule(previous, self.step, planned, args.rewarm)
            if self.world.is_main:
                _trim_metrics(self.metrics_path, self.step)
                print(f"resuming from step {self.step} of {args.out}", flush=True)
                note = _schedule_note(previous, self.runner.schedule, self.step, args)
                if note:
                    print(note, flush=True)
        self.start_step = self.step
        self.stream = BatchStream(self.data.train, args.batch_size, args.seed, self.world.rank,
                                  self.world.world_size)
        saved_args = dataclasses.asdict(args)  # paths made absolute so a resume works from anywhere
        saved_args["data"] = [os.path.abspath(p) for p in args.data]
        for key in ("tokenizer", "init_from"):
            saved_args[key] = saved_args[key] and os.path.abspath(saved_args[key])
        saved_args["rewarm"] = False  # a one-time action, not a setting a later resume repeats
        saved_args["lora"] = self.lora.to_dict() if self.lora is not None else None
        if self.lora is not None and self.resume_dir:  # the base model, for the next resume
            saved_args["init_from"] = os.path.abspath(self.model_dir)
        schedule = self.runner.schedule
        self.run_state = {"args": saved_args, "data_position": 0,
                          "schedule": {"start": schedule.start, "total_steps": schedule.total_steps,
                                       "warmup": schedule.warmup}}
        self.baseline = unigram_entropy(self.data.val, self.config.vocab_size)

    # -- the loop ----------------------------------------------------------------------------
    def loop(self) -> None:
        from tqdm.auto import tqdm

        args, world = self.args, self.world
        self.bar = tqdm(total=args.max_steps, initial=self.step, disable=not (args.progress and world.is_main),
                        unit="step", dynamic_ncols=True)
        self.start_time = time.perf_counter()
        try:
            self.log = MetricsLog(self.out, args.tensorboard) if world.is_main else None
        except ImportError as exc:
            raise TrainError(str(exc)) from None
        self.interrupted = False
        restore = self._catch_interrupts()
        try:
            while self.step < args.max_steps:
                self._train_step()
                saved = self.step % args.save_every == 0 or self.step == args.max_steps
                if saved:
                    self.save_checkpoint()
                # every rank stops at the same step; an interrupt of the last step lets it finish
                if self.step < args.max_steps and world.any(self.interrupted, self.device):
                    if not saved:
                        self.save_checkpoint()
                    raise TrainInterrupted(self.step, args.out,
                                           os.path.join(self.out, ckpt.checkpoint_name(self.step)))
        finally:
            restore()
            self.bar.close()
            if self.log:
                self.log.close()
        self.wall = time.perf_counter() - self.start_time

    def _catch_interrupts(self) -> Callable[[], None]:
        """Make the first Ctrl-C (SIGINT) ask the loop to stop after the current step and save
        it; a second one aborts at once. Returns the function that puts the old handler back.
        (Only the main thread can handle signals; elsewhere Ctrl-C keeps its usual effect.)

        Under ``torchrun`` the workers run in their own sessions: Ctrl-C reaches the launcher,
        which sends one SIGINT to every worker and kills them if they have not exited after its
        ``--shutdown-timeout`` (30 s by default; raise it when a checkpoint takes longer to
        write). Ranks may see the signal at different steps, so the loop all-reduces the flag at
        every step boundary and every rank stops after the same step."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            if self.world.is_main:
                print("\ninterrupt: stopping at the end of this step and saving a checkpoint "
                      "(Ctrl-C again aborts at once)", file=sys.stderr, flush=True)

        previous = signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous)

    def _train_step(self) -> None:
        """One optimizer step, its loss check and its log record."""
        args, step = self.args, self.step
        t0 = time.perf_counter()
        micro = [split_labels(self.stream.batch(step * args.grad_accum + m)) for m in range(args.grad_accum)]
        result = self.runner.accumulate(step, micro)
        loss_value = self.world.mean(result.mean, self.device)
        if not math.isfinite(loss_value):
            last = ckpt.list_checkpoints(self.out)
            kept = f"the last good checkpoint is {last[-1][1]}" if last else "no checkpoint was written yet"
            raise TrainError(f"the loss is {loss_value} at step {step + 1}; training stopped "
                             f"({kept}). Lower --lr or check the data.")
        grad_norm = float(self.runner.update())
        self.step = step = step + 1
        self.losses.append(loss_value)
        tok_s = self.tokens_per_step / (time.perf_counter() - t0)
        record: dict[str, Any] = {"step": step, "loss": loss_value, "lr": result.lr, "grad_norm": grad_norm,
                                  "tokens_per_s": tok_s, "tokens": step * self.tokens_per_step}
        memory = _peak_memory_gib(self.device)
        if memory is not None:
            record["max_memory_gib"] = memory
        if step % args.eval_every == 0 or step == args.max_steps:
            self.val_loss = evaluate(self.model, self.data.val, args.batch_size, args.eval_batches,
                                     self.device, self.runner.autocast)
            record["val_loss"] = self.val_loss
            if self.world.is_main:
                self.bar.write(f"step {step}: train loss {loss_value:.4f}, val loss {self.val_loss:.4f} "
                               f"(unigram baseline {self.baseline:.4f})")
        if self.log and (step % args.log_every == 0 or "val_loss" in record):
            self.log.write(record)
        self.bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{result.lr:.2e}", tok_s=f"{tok_s:.0f}")
        self.bar.update(1)

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """A numbered checkpoint of the current step: rank 0 writes it and every rank waits, or,
        of a sharded model, every rank writes its shards."""
        self.run_state["data_position"] = self.step * self.args.grad_accum
        if self.runner.sharded:
            ckpt.save_sharded_checkpoint(self.out, self.step, self.model, self.config, self.tokenizer,
                                         self.runner.optimizer, self.run_state, self.args.keep_checkpoints,
                                         self.world.is_main, self.world.barrier)
            return
        if self.world.is_main:
            ckpt.save_checkpoint(self.out, self.step, self.saved, self.tokenizer, self.runner.optimizer,
                                 self.run_state, self.args.keep_checkpoints)
        self.world.barrier()

    def _whole_model(self) -> HymbaForCausalLM | None:
        """The trained model, whole, on rank 0 (None elsewhere): a sharded one is gathered (every
        rank takes part) into a plain copy on this rank's device."""
        if not self.runner.sharded:
            return self.model if self.world.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # full_state_dict + cpu_offload: the whole tensors arrive in rank 0's host memory only
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.world.is_main:
            return None
        model = HymbaForCausalLM(self.config)
        model.load_state_dict(full)
        return model.to(self.device)

    # -- the end -----------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Save ``final/`` (and generate the sample) on rank 0; the run's summary."""
        args, world = self.args, self.world
        final = os.path.join(self.out, "final")
        sample = ""
        model = self._whole_model()
        if model is not None:
            tmp = os.path.join(self.out, ".tmp-final")
            shutil.rmtree(tmp, ignore_errors=True)
            ckpt.save_model_folder(tmp, self.saved if self.lora is not None else model, self.tokenizer)
            ckpt.publish(tmp, final)
            if args.sample_tokens > 0:
                sample = _sample(model, self.tokenizer, args.sample_prompt, args.sample_tokens, args.seed)
        world.barrier()
        tail = self.losses[-10:]
        trained = self.step - self.start_step
        return {
            "out": self.out, "final": final, "steps": self.step, "trained_steps": trained,
            "train_loss": sum(tail) / len(tail), "losses": self.losses, "val_loss": self.val_loss,
            "unigram_entropy": self.baseline, "parameters": self.model.num_parameters(),
            "train_tokens": len(self.data.train) * args.seq_len, "val_tokens": len(self.data.val) * args.seq_len,
            "tokens_per_s": trained * self.tokens_per_step / self.wall, "wall_s": self.wall,
            "sample": sample, "world_size": world.world_size, "parallel": self.parallel,
            "trainable_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "lora": self.lora is not None, "base": self.model_dir and os.path.abspath(self.model_dir),
        }


__all__ = ["TrainArgs", "TrainError", "TrainInterrupted", "evaluate", "train"]

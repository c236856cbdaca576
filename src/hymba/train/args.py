"""The settings of a training run (:class:`TrainArgs`) and the ways a run stops early."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any


class TrainError(ValueError):
    """A training run cannot start or had to stop; the message says why."""


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run at a step boundary, after saving that step as a numbered
    checkpoint: ``step``, the run folder ``out`` and the ``checkpoint`` folder."""

    def __init__(self, step: int, out: str, checkpoint: str) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint {checkpoint}")
        self.step, self.out, self.checkpoint = step, out, checkpoint


@dataclass
class TrainArgs:
    """Everything a run depends on. ``data`` empty: the bundled corpus; ``tokenizer`` None: the
    ``init_from`` checkpoint's tokenizer, else the bundled one. ``model`` overrides config fields
    of ``preset`` (from-scratch runs). ``warmup`` below 1 is a fraction of ``max_steps``.

    Resuming with another ``max_steps`` (:func:`~.optim.continue_schedule`): before the
    learning rate has begun to decay, the decay moves to the new end; once it has, the run goes
    on under its schedule (the extra steps of a finished run train at ``min_lr``), unless
    ``rewarm`` starts a new warmup-stable-decay phase from the resumed step to ``max_steps``.

    ``lora`` (``"r=16,alpha=32[,dropout=0.05][,targets=in_proj,...]"`` or a mapping, see
    :class:`~.lora.LoraSettings`): train LoRA adapters on the ``init_from`` model instead of its
    weights; checkpoints and ``final/`` then hold the adapter (PEFT's format), not the model.

    ``parallel`` (under ``torchrun``): ``ddp`` replicates the model on every process, ``fsdp``
    shards it (FSDP2; ``cpu_offload`` keeps the shards and the optimizer state in host memory),
    ``auto`` picks DDP when the model, its gradients and AdamW state fit the device with room
    to spare (see :func:`~.distributed.choose_parallel`). One process ignores it."""

    out: str = "hymba-run"
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    lora: str | dict[str, Any] | None = None
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
    rewarm: bool = False
    weight_decay: float = 0.1
    adam_beta2: float = 0.95
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
    parallel: str = "auto"
    cpu_offload: bool = False
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
        check(("adam_beta2",), lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")
        check(("decay_fraction",), lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
        check(("val_fraction",), lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")
        check(("overwrite", "rewarm", "gradient_checkpointing", "tensorboard", "compile", "cuda_graph", "progress",
               "cpu_offload"),
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
        if self.rewarm and not self.resume:
            raise TrainError("rewarm starts a new learning-rate phase of a resumed run: it needs resume")
        if self.cuda_graph and self.compile:
            raise TrainError("use either cuda_graph or compile, not both")
        if self.parallel not in ("auto", "ddp", "fsdp"):
            raise TrainError(f"parallel must be 'auto', 'ddp' or 'fsdp', got {self.parallel!r}")
        if self.cuda_graph and self.parallel == "fsdp":
            raise TrainError("cuda_graph cannot capture FSDP: its parameter all-gathers and gradient "
                             "reduce-scatters run outside the graph; drop --cuda-graph or use one GPU")
        if self.cpu_offload and self.parallel != "fsdp":
            raise TrainError("cpu_offload offloads FSDP's shards and optimizer state: it needs parallel 'fsdp'")
        if self.lora is not None:
            from .lora import LoraError, LoraSettings

            try:
                LoraSettings.parse(self.lora)
            except LoraError as exc:
                raise TrainError(str(exc)) from None
            if not (self.init_from or self.resume):
                raise TrainError("lora trains adapters on a trained model: give init_from (the base model)")
            if self.parallel == "fsdp":
                raise TrainError("lora trains small adapters on a replicated model: use parallel 'ddp' "
                                 "(or 'auto'), not 'fsdp'")


__all__ = ["TrainArgs", "TrainError", "TrainInterrupted"]

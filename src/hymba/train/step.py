"""One optimizer step, shared by every training loop: :class:`TrainStep` (forward and backward
of the micro-batches, clipping, the AdamW update at the schedule's learning rate), used by
:func:`hymba.train.train` (a run folder with checkpoints) and by :func:`train_model` (an in-memory
model on given batches, nothing written; the ablation trains through it)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ..model import HymbaForCausalLM
from . import distributed
from .args import TrainArgs, TrainError
from .graph import TrainingGraph
from .optim import Schedule, build_optimizer, set_lr


class TrainStep:
    """The optimizer step of ``model`` under ``args``: the forward and backward of each
    micro-batch (eager; under ``torchrun`` DDP or FSDP2 with the gradients reduced on the last
    micro-batch; ``torch.compile`` or a CUDA graph), then gradient clipping and the AdamW update
    at the schedule's learning rate.

    ``accumulate(step, micro_batches)`` does the forward and backward passes and returns the
    losses; ``update()`` clips the gradients, steps the optimizer and returns the gradient norm.
    The caller decides when to read the losses (reading waits for the device).
    """

    def __init__(self, model: HymbaForCausalLM, args: TrainArgs, world: distributed.DistInfo | None = None,
                 parallel: str = "ddp", device: torch.device | None = None) -> None:
        self.model, self.args = model, args
        self.world = world or distributed.DistInfo()
        # the compute device: the model's, unless FSDP is to move it there (or keep it offloaded)
        self.device = device or next(model.parameters()).device
        default = "bfloat16" if self.device.type == "cuda" else "float32"
        use_bf16 = (args.dtype or default) == "bfloat16"
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if use_bf16
                         else contextlib.nullcontext())
        if args.cuda_graph and (self.device.type != "cuda" or self.world.enabled):
            raise TrainError("cuda_graph needs one CUDA device in one process: a graph replays one "
                             "process's kernels, without DDP's gradient all-reduce or FSDP's "
                             "parameter all-gathers and gradient reduce-scatters")
        self.sharded = self.world.enabled and parallel == "fsdp"
        self.wrapped: torch.nn.Module = model
        if self.sharded:  # in place: the parameters become DTensor shards, the model gathers them
            # bfloat16 gathers halve the all-gather traffic on CUDA; gloo (CPU) gathers float32
            gather = torch.bfloat16 if use_bf16 and self.device.type == "cuda" else torch.float32
            distributed.shard_model(model, model.layers, self.device, gather, args.cpu_offload)
        elif self.world.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(model, device_ids=ids)
        if args.compile:
            self.wrapped = torch.compile(self.wrapped)
        self.graph = None
        if args.cuda_graph:
            self.graph = TrainingGraph(model, torch.bfloat16 if use_bf16 else None, 1.0 / args.grad_accum)
        self.optimizer = build_optimizer(model, args.lr, args.weight_decay, betas=(0.9, args.adam_beta2))
        self.schedule = Schedule(args.schedule, args.lr, args.max_steps, args.warmup, args.min_lr,
                                 args.decay_fraction)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def accumulate(self, step: int, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> StepLosses:
        """Set the learning rate of 0-based ``step`` and run the forward and backward passes of
        its ``(input_ids, labels)`` micro-batches (labels -100: no loss), gradients averaged."""
        lr = self.schedule(step)
        set_lr(self.optimizer, lr)
        losses: list[torch.Tensor] = []
        counted = 0
        last = len(micro_batches) - 1
        for micro, (x, labels) in enumerate(micro_batches):
            has_targets = bool((labels[:, 1:] != -100).any())  # a chat row may hold only prompt
            if self.graph is not None:  # a batch without targets adds a zero gradient: skipped
                if has_targets:  # the first one writes the gradients, the others add to them
                    losses.append(self.graph(x, labels, accumulate=counted > 0))
                    counted += 1
                continue
            x, labels = x.to(self.device), labels.to(self.device)
            sync = not self.world.enabled or micro == last  # gradients reduced once per step
            if self.sharded:
                self.model.set_requires_gradient_sync(sync)
            with self.autocast, (contextlib.nullcontext() if sync or self.sharded else self.wrapped.no_sync()):
                result = self.wrapped(x, labels=labels if has_targets else None)
                loss = result.loss if has_targets else result.logits.sum() * 0.0
                (loss / len(micro_batches)).backward()
            losses.append(loss.detach())
            counted += has_targets
        if self.graph is not None and counted == 0:  # no micro-step wrote this step's gradients:
            for p in self.params:  # zeros, as the eager path's zero-loss backward gives
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad.zero_()
        return StepLosses(lr, losses, counted)

    def update(self) -> torch.Tensor:
        """Clip the gradients (``grad_clip`` 0: no clipping), step the optimizer, clear the
        gradients; returns the gradient norm before clipping."""
        clip = self.args.grad_clip if self.args.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        if self.sharded:  # the norm of sharded gradients is a DTensor: its value on every rank
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        if self.graph is None:  # a graph's next step writes the gradients
            self.optimizer.zero_grad(set_to_none=True)
        return grad_norm


@dataclass
class StepLosses:
    """What :meth:`TrainStep.accumulate` returns: the learning rate it set, the losses of the
    micro-batches (device tensors) and how many of them had targets."""

    lr: float
    losses: list[torch.Tensor]
    counted: int

    @property
    def mean(self) -> float:
        """The mean loss of the micro-batches with targets (reads the device)."""
        return sum(float(loss) for loss in self.losses) / max(self.counted, 1)


def train_model(model: HymbaForCausalLM, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                args: TrainArgs, progress: Callable[[int, float], None] | None = None,
                report_every: int = 10) -> list[float]:
    """Train an in-memory ``model`` on the device it is on for ``args.max_steps`` optimizer
    steps, each over the next ``args.grad_accum`` ``(input_ids, labels)`` pairs of ``batches``
    (labels -100 where there is no loss; rows of any shape). Nothing is written: ``args``' output,
    data, checkpoint and logging settings are not used, its optimisation settings (learning rate,
    schedule, weight decay, ``adam_beta2``, clipping, ``dtype``, ``compile``, ``cuda_graph``) are.
    The model is left in the training mode it had. Returns the loss of every step.

    ``progress(steps_done, last_loss)`` is called every ``report_every`` steps: reading a loss
    waits for the device, so the losses are read in groups and the host can queue steps ahead."""
    args.validate()
    was_training = model.training
    model.train()
    runner = TrainStep(model, args)
    batches = iter(batches)
    losses: list[float] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            losses.extend(torch.stack(pending).float().tolist())
            pending.clear()
            if progress:
                progress(len(losses), losses[-1])

    for step in range(args.max_steps):
        micro = list(itertools.islice(batches, args.grad_accum))
        if len(micro) < args.grad_accum:
            raise TrainError(f"the batches ran out at step {step} of {args.max_steps}")
        result = runner.accumulate(step, micro)
        runner.update()
        total = torch.stack(result.losses).sum() if len(result.losses) > 1 else result.losses[0]
        pending.append(total / max(result.counted, 1))
        if len(pending) == report_every:
            flush()
    flush()
    model.train(was_training)
    return losses

__all__ = ["StepLosses", "TrainStep", "train_model"]

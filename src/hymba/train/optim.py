"""AdamW with the paper's decay exclusions, and learning-rate schedules (WSD, cosine)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

# Parameters that never get weight decay: the learned meta tokens and the SSM's A_log and D.
NO_DECAY_NAMES = ("memory_tokens", "A_log", ".D")


def no_decay(name: str, param: torch.Tensor) -> bool:
    """True for norm weights and biases (every 1-D tensor) and the names in ``NO_DECAY_NAMES``."""
    return param.ndim < 2 or any(name.endswith(n) for n in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices and everything :func:`no_decay` exempts."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> torch.optim.AdamW:
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                             fused=fused or None)


@dataclass(frozen=True)
class Schedule:
    """Learning rate as a function of the optimizer step (0-based).

    ``wsd``: linear warmup, constant, then a linear decay to ``min_lr`` over the last
    ``decay_fraction`` of the steps (the paper: 1% warmup, last 20% decay to 1e-5).
    ``cosine``: linear warmup, then a cosine from ``lr`` to ``min_lr`` at the last step.
    ``warmup`` below 1 is a fraction of the steps, otherwise a step count.

    The schedule spans the steps ``start`` .. ``total_steps - 1`` (a run starts at 0; a
    ``--rewarm`` phase starts at the step it resumes from); after its last step it stays at
    ``min_lr``. :func:`continue_schedule` decides the schedule of a resumed run.
    """

    kind: str
    lr: float
    total_steps: int
    warmup: float = 0.01
    min_lr: float = 1e-5
    decay_fraction: float = 0.2
    start: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("wsd", "cosine"):
            raise ValueError(f"schedule must be 'wsd' or 'cosine', got {self.kind!r}")
        if self.total_steps - self.start < 1:
            raise ValueError(f"total steps must be >= 1, got {self.total_steps - self.start}")
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must lie in [0, 1], got {self.decay_fraction}")

    @property
    def steps(self) -> int:
        """The number of steps the schedule spans."""
        return self.total_steps - self.start

    @property
    def warmup_steps(self) -> int:
        w = self.warmup * self.steps if self.warmup < 1 else self.warmup
        return min(int(round(w)), self.steps)

    @property
    def decay_start(self) -> int:
        """The first step whose learning rate is below the peak after the warmup (the end of
        the schedule for a WSD schedule without decay)."""
        if self.kind == "cosine":
            return self.start + self.warmup_steps
        return self.total_steps - int(round(self.decay_fraction * self.steps))

    def __call__(self, step: int) -> float:
        step -= self.start
        warm = self.warmup_steps
        if step < warm:
            return self.lr * (step + 1) / warm
        last = self.steps - 1
        if self.kind == "cosine":
            span = max(1, last - warm)
            t = min(1.0, (step - warm) / span)
            return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))
        decay_steps = int(round(self.decay_fraction * self.steps))
        start = self.steps - decay_steps
        if decay_steps == 0 or step < start:
            return self.lr
        t = min(1.0, (step - start + 1) / decay_steps)
        return self.lr + (self.min_lr - self.lr) * t


def continue_schedule(previous: Schedule, step: int, planned: Schedule, rewarm: bool = False) -> Schedule:
    """The schedule of a run resumed at ``step``: ``previous`` is the schedule the checkpoint was
    trained under, ``planned`` the one the resumed run's settings give from step 0 (its
    ``total_steps`` is the new ``max_steps``; its rates and shape settings are used throughout).

    * Same ``max_steps``: the run goes on under its schedule (an exact resume).
    * A different ``max_steps`` while the schedule has not begun to decay (WSD: warmup or the
      stable phase; cosine: warmup): the decay moves to the new end, the warmup keeps its steps,
      so the learning rate goes on as it was.
    * A different ``max_steps`` once the decay has begun (or ended): the previous schedule goes
      on; the decay ends where it was going to and the steps after it train at ``min_lr`` (the
      learning rate never jumps back up by itself).
    * ``rewarm``: a new phase of the planned shape from ``step`` to ``max_steps``: warmup from
      near zero to ``lr``, stable, decay to ``min_lr`` (cosine: warmup, cosine).
    """
    if rewarm:
        return dataclasses.replace(planned, start=step)
    if planned.total_steps == previous.total_steps:
        return dataclasses.replace(planned, start=previous.start)
    pinned = float(previous.warmup_steps)  # as a count: it must not change with the length
    stretched = dataclasses.replace(planned, start=previous.start, warmup=pinned)
    if step < previous.decay_start and step < stretched.decay_start:
        return stretched
    return dataclasses.replace(planned, start=previous.start, total_steps=previous.total_steps,
                               warmup=pinned)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

"""AdamW with the paper's decay exclusions, and learning-rate schedules (WSD, cosine)."""

from __future__ import annotations

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
    ``warmup`` below 1 is a fraction of ``total_steps``, otherwise a step count.
    """

    kind: str
    lr: float
    total_steps: int
    warmup: float = 0.01
    min_lr: float = 1e-5
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in ("wsd", "cosine"):
            raise ValueError(f"schedule must be 'wsd' or 'cosine', got {self.kind!r}")
        if self.total_steps < 1:
            raise ValueError(f"total steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must lie in [0, 1], got {self.decay_fraction}")

    @property
    def warmup_steps(self) -> int:
        w = self.warmup * self.total_steps if self.warmup < 1 else self.warmup
        return min(int(round(w)), self.total_steps)

    def __call__(self, step: int) -> float:
        warm = self.warmup_steps
        if step < warm:
            return self.lr * (step + 1) / warm
        last = self.total_steps - 1
        if self.kind == "cosine":
            span = max(1, last - warm)
            t = min(1.0, (step - warm) / span)
            return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))
        decay_steps = int(round(self.decay_fraction * self.total_steps))
        start = self.total_steps - decay_steps
        if decay_steps == 0 or step < start:
            return self.lr
        t = min(1.0, (step - start + 1) / decay_steps)
        return self.lr + (self.min_lr - self.lr) * t


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

"""A training micro-step (forward, loss, backward) captured in a CUDA graph and replayed.

One micro-step of Hymba-1.5B on a 4K sequence launches thousands of kernels; on a slow host
those launches can take longer than the GPU takes to run them. Replaying a captured graph
launches them all at once. Training rows are packed to a
fixed (batch, seq_len), so one graph serves every micro-batch.

The first micro-step of an optimizer step writes the parameters' ``.grad`` tensors (no zeroing,
no adding: a graph captured with the gradients unset, whose backward allocates them); later
micro-steps of gradient accumulation replay a second graph that adds into them. Both graphs share
one memory pool, and the gradients live in it: the graph puts them back on the parameters when a
first micro-step replays (after ``zero_grad()`` set them to None, say), and refuses to add to
gradients that are no longer its own.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..model.layout import InputError


class TrainingGraph:
    """``graph(input_ids, labels, accumulate=False)``: the next-token loss of one micro-batch
    (labels -100 are ignored), with its gradient times ``loss_scale`` written to ``.grad`` or,
    with ``accumulate``, added to it, through a CUDA graph.

    The first call of each kind fixes the batch shape, runs the step eagerly on a side stream
    (compilation and lazy initialisation stay outside the graph; its gradient counts) and captures
    it; later calls copy the batch into the graph's inputs and replay it. The first call cannot
    accumulate.
    """

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None, loss_scale: float = 1.0) -> None:
        self.device = next(model.parameters()).device
        if self.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs the model on a CUDA device, not {self.device}")
        self.model, self.loss_scale, self.autocast_dtype = model, loss_scale, autocast_dtype
        self.input_ids: Tensor | None = None
        self.labels: Tensor | None = None
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}  # by `accumulate`
        self.losses: dict[bool, Tensor] = {}
        self.grads: list[tuple[nn.Parameter, Tensor]] = []  # the gradients the graphs write

    def _step(self) -> Tensor:
        autocast = (torch.autocast("cuda", dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        with autocast:
            loss = self.model(self.input_ids, labels=self.labels).loss
        (loss * self.loss_scale).backward()
        return loss.detach()

    def __call__(self, input_ids: Tensor, labels: Tensor, accumulate: bool = False) -> Tensor:
        if accumulate and False not in self.graphs:
            raise ValueError("the first call writes the gradients: only later calls may accumulate")
        if self.input_ids is None:
            self.input_ids = torch.empty_like(input_ids, dtype=torch.long, device=self.device)
            self.labels = torch.empty_like(self.input_ids)
        if input_ids.shape != self.input_ids.shape or labels.shape != self.labels.shape:
            raise InputError(f"the graph was built for batches of shape {tuple(self.input_ids.shape)}, "
                             f"got {tuple(input_ids.shape)} and {tuple(labels.shape)}")
        vocab = self.model.config.vocab_size
        if input_ids.device.type == "cpu":  # the graph cannot check the ids on the device
            lo, hi = torch.aminmax(input_ids)
            if lo < 0 or hi >= vocab:
                raise InputError(f"token ids must lie in [0, {vocab})")
        self.input_ids.copy_(input_ids, non_blocking=True)
        self.labels.copy_(labels, non_blocking=True)
        if accumulate and any(p.grad is not g for p, g in self.grads):
            raise ValueError("the gradients were replaced since the graph wrote them; zero them in place "
                             "(zero_grad(set_to_none=False)) or start the next step with accumulate=False")
        if accumulate in self.graphs:
            self.graphs[accumulate].replay()
            if not accumulate:  # every gradient rewritten: back on the parameters, whatever happened to them
                for p, g in self.grads:
                    if p.grad is not g:
                        p.grad = g
            return self.losses[accumulate].clone()  # the buffer is shared with the other graph's pool
        return self._capture(accumulate)

    def _capture(self, accumulate: bool) -> Tensor:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not accumulate:
            for p in params:
                p.grad = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loss = self._step()  # a real micro-step: its gradient counts
        torch.cuda.current_stream().wait_stream(side)
        eager_grads = [p.grad for p in params]
        if not accumulate:  # unset, so that the captured backward allocates the gradients
            for p in params:
                p.grad = None
        graph = torch.cuda.CUDAGraph()
        pool = self.graphs[False].pool() if False in self.graphs else None
        with torch.cuda.graph(graph, pool=pool):  # records kernels without running them
            self.losses[accumulate] = self._step()
        self.graphs[accumulate] = graph
        if not accumulate:  # the graph's gradient tensors take the eager step's values
            for p, eager in zip(params, eager_grads):
                if (p.grad is None) != (eager is None):
                    raise RuntimeError("the captured step reached other parameters than the eager one")
                if p.grad is not None:
                    p.grad.copy_(eager)
                    self.grads.append((p, p.grad))
        return loss


__all__ = ["TrainingGraph"]

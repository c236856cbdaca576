"""A training micro-step (forward, loss, backward) captured in a CUDA graph and replayed.

One micro-step of Hymba-1.5B on a 4K sequence launches about 4,200 kernels; on a slow host
those launches take longer than the GPU takes to run them (an H100: 312 ms a step for 231 ms of
kernels). Replaying a captured graph launches them all at once. Training rows are packed to a
fixed (batch, seq_len), so one graph serves every micro-batch.

Replays add into the parameters' ``.grad`` tensors in place, like an eager backward. Zero them
in place (``optimizer.zero_grad(set_to_none=False)``), never set them to None: the graph keeps
writing to the tensors that existed when it was captured.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..model.layout import InputError


class TrainingGraph:
    """``graph(input_ids, labels)``: the next-token loss of one micro-batch (labels -100 are
    ignored), its gradient times ``loss_scale`` added to ``.grad``, through a CUDA graph.

    The first call fixes the batch shape, runs the step eagerly on a side stream (compilation
    and lazy initialisation stay outside the graph) and captures it; later calls copy the batch
    into the graph's inputs and replay it. The returned loss is a buffer that the next call
    overwrites.
    """

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None, loss_scale: float = 1.0) -> None:
        self.device = next(model.parameters()).device
        if self.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs the model on a CUDA device, not {self.device}")
        self.model, self.loss_scale, self.autocast_dtype = model, loss_scale, autocast_dtype
        self.input_ids: Tensor | None = None
        self.labels: Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: Tensor | None = None

    def _step(self) -> Tensor:
        autocast = (torch.autocast("cuda", dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        with autocast:
            loss = self.model(self.input_ids, labels=self.labels).loss
        (loss * self.loss_scale).backward()
        return loss.detach()

    def __call__(self, input_ids: Tensor, labels: Tensor) -> Tensor:
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
        if self.graph is not None:
            self.graph.replay()
            return self.loss
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loss = self._step()  # a real micro-step: its gradient counts
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records kernels without running them
            self.loss = self._step()
        self.graph = graph
        return loss


__all__ = ["TrainingGraph"]

"""One decode step (one token per row -> the next token's logits), eager or as a CUDA graph."""

from __future__ import annotations

import torch
from torch import Tensor

from .cache import HybridCache


def decode_logits(model, tokens: Tensor, cache: HybridCache) -> Tensor:
    """Store ``tokens`` (b,) after what ``cache`` holds; the next token's raw logits (b, V),
    float32. The tokens are not range-checked: they come from the model's own vocabulary."""
    return model(tokens[:, None], state=cache, check_inputs=False).logits[:, 0]


class DecodeGraph:
    """:func:`decode_logits` as a CUDA graph.

    ``cache`` must have ``static_shapes`` (no tensor shape of a step depends on how much of it
    is used). The first call runs the step eagerly (warm-up: Triton compilation and lazy
    initialisation stay outside the graph) and captures it; later calls replay it. The returned
    logits are a buffer that the next call overwrites.
    """

    def __init__(self, model, cache: HybridCache) -> None:
        if not cache.static_shapes:
            raise ValueError("a captured decode step needs a HybridCache(static_shapes=True)")
        self.model, self.cache = model, cache
        self.tokens = torch.zeros(cache.batch_size, dtype=torch.long, device=cache.lengths.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None

    def __call__(self, tokens: Tensor) -> Tensor:
        """Store ``tokens`` (b,) after what the cache holds; the next token's logits (b, V)."""
        self.tokens.copy_(tokens)
        if self.graph is not None:
            self.cache.check_room(1)
            self.graph.replay()
            self.cache.count_replayed(1)  # the graph advanced the device-side lengths
            return self.logits
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            logits = decode_logits(self.model, self.tokens, self.cache)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = decode_logits(self.model, self.tokens, self.cache)
        self.graph = graph
        self.cache.uncount(1)  # capturing ran no kernel: nothing more was stored
        return logits

"""Inference: the hybrid cache, its accounting, the pieced prefill, the decode step (eager or a
CUDA graph), sampling, and generation (:func:`generate`, :func:`stream`).

Everything here drives the model through its public forward (``model(ids, state=cache)``) and
:meth:`~hymba.model.HymbaForCausalLM.run_meta_tokens`; nothing reaches into its modules.
"""

from .accounting import cache_bytes, growth_per_token
from .cache import HybridCache, MetaPrefix, meta_prefix
from .generation import DecodeLoop, GenerationOptions, GenerationOutput, generate, stream
from .prefill import prefill
from .sampling import SamplingConfig
from .step import DecodeGraph, decode_logits

__all__ = [
    "DecodeGraph",
    "DecodeLoop",
    "GenerationOptions",
    "GenerationOutput",
    "HybridCache",
    "MetaPrefix",
    "SamplingConfig",
    "cache_bytes",
    "decode_logits",
    "generate",
    "growth_per_token",
    "meta_prefix",
    "prefill",
    "stream",
]

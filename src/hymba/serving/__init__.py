"""Serving: a continuous-batching engine over the hybrid cache (:mod:`.engine`) and, with the
``serve`` extra, an OpenAI-compatible HTTP server on it (``hymba serve``)."""

from .engine import Engine, EngineConfig, LogProb, QueueFull, RequestOutput, SamplingParams

__all__ = ["Engine", "EngineConfig", "LogProb", "QueueFull", "RequestOutput", "SamplingParams"]

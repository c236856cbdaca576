"""Serving: a continuous-batching engine (``engine``), its asyncio wrapper (``async_engine``) and
the OpenAI-compatible HTTP server (``protocol``, ``server``) that ``hymba serve`` runs."""

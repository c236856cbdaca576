"""Fixtures for the serving tests: a checkpoint folder (the tiny preset with the test tokenizer),
its model, and ``serve``: a real uvicorn server on a free loopback port, in a thread, over an
AsyncEngine (see servekit.py)."""

from __future__ import annotations

import contextlib

import pytest
from servekit import ServerThread
from tokenkit import write_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A checkpoint folder: the test tokenizer and the tiny preset with random weights."""
    import torch

    from hymba import HymbaConfig, HymbaForCausalLM

    folder = tmp_path_factory.mktemp("serve-ckpt")
    tok = write_tokenizer(folder)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = HymbaConfig.from_preset("tiny", vocab_size=tok.get_vocab_size(), tie_word_embeddings=False)
        model = HymbaForCausalLM(config)
        with torch.no_grad():  # varied continuations and a spread-out next-token distribution
            model.model.embed_tokens.weight.normal_(0, 1)
            model.lm_head.weight.normal_(0, 0.3)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tokenizer_dir):
    from hymba import HymbaForCausalLM

    return HymbaForCausalLM.from_pretrained(tokenizer_dir).eval()


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from hymba import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture
def serve():
    """``serve(engine, tokenizer, **build_app_kwargs) -> (ServerThread, AsyncEngine)``; every
    server and engine started is stopped at the end of the test."""
    from hymba.serving.async_engine import AsyncEngine
    from hymba.serving.server import build_app

    started: list[tuple[ServerThread, AsyncEngine]] = []

    def start(engine, tokenizer, model_name: str = "tiny", **kwargs):
        async_engine = AsyncEngine(engine)
        app = build_app(async_engine, tokenizer, model_name, **kwargs)
        try:
            server = ServerThread(app)
        except BaseException:
            async_engine.close()
            raise
        started.append((server, async_engine))
        return server, async_engine

    yield start
    for server, async_engine in started:
        with contextlib.suppress(Exception):
            server.stop()
        async_engine.close()

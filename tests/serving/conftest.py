"""Fixtures for the serving tests: a tokenizer folder, and ``serve``: a real uvicorn server on a
free loopback port, in a thread, over an AsyncEngine (see servekit.py)."""

from __future__ import annotations

import contextlib

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

from fake_engine import install_contract_module  # noqa: E402
from servekit import ServerThread  # noqa: E402
from tokenkit import write_tokenizer  # noqa: E402

install_contract_module()  # the engine's types, until hymba.serving.engine exists


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-tokenizer")
    write_tokenizer(folder)
    return folder


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

"""The real engine behind the server: a load test of concurrent clients whose greedy answers must
each equal ``model.generate`` on that prompt alone, and ``hymba serve`` as a subprocess that stops
cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import torch  # noqa: E402
from servekit import wait_until  # noqa: E402

import hymba  # noqa: E402
from hymba.cli import main  # noqa: E402
from hymba.serving.engine import Engine, EngineConfig  # noqa: E402


def workload(seed: int, count: int, vocab: int) -> list[tuple[list[int], int, bool]]:
    """(prompt ids, max_tokens, streamed) of mixed lengths; a third share one 24-token header."""
    rng = random.Random(seed)
    header = [1] + [rng.randrange(4, vocab) for _ in range(23)]
    out = []
    for i in range(count):
        body = [rng.randrange(4, vocab) for _ in range(rng.randrange(1, 40))]
        prompt = header + body if i % 3 == 0 else [1] + body
        out.append((prompt, rng.randrange(1, 25), i % 2 == 0))
    return out


def test_64_concurrent_clients_get_what_generate_gives(serve, tokenizer, tiny_model):
    engine = Engine(tiny_model, tokenizer, EngineConfig(max_batch=16, max_model_len=256, prefill_chunk_tokens=64))
    server, async_engine = serve(engine, tokenizer)
    jobs = workload(0, 64, len(tokenizer))

    async def one(client: openai.AsyncOpenAI, prompt, max_tokens, streamed) -> tuple[str, int]:
        kwargs = dict(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0)
        if not streamed:
            r = await client.completions.create(**kwargs)
            return r.choices[0].text, r.usage.completion_tokens
        text, usage = [], None
        stream = await client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].text)
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
        return "".join(text), usage

    async def run_all():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0,
                                      timeout=60) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, *job) for job in jobs)), 120)

    answers = asyncio.run(run_all())
    eos = tokenizer.eos_token_id
    mismatches = []
    for (prompt, max_tokens, streamed), (text, count) in zip(jobs, answers):
        new = tiny_model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens,
                                  eos_token_id=eos)[0, len(prompt):].tolist()
        if eos in new:
            new = new[: new.index(eos) + 1]
        shown = new[:-1] if new and new[-1] == eos else new
        expected = tokenizer.decode(shown).rstrip("\ufffd")  # an incomplete last character is not shown
        if (text, count) != (expected, len(new)):
            mismatches.append((text, count, expected, len(new), streamed))
    assert not mismatches, f"{len(mismatches)} of {len(jobs)} answers differ from model.generate: {mismatches[:3]}"

    def idle() -> bool:
        s = async_engine.stats()
        return (s["slots_used"], s["state_bytes_in_use"], s["running"], s["waiting"], s["in_flight"]) == (0,) * 5
    assert wait_until(idle, 10), async_engine.stats()
    stats = async_engine.stats()
    assert stats["peak_slots_used"] > 1  # the requests were batched
    assert stats["outcomes"].get("abort", 0) == 0 and stats["outcomes"].get("error", 0) == 0
    assert sum(stats["outcomes"].values()) == len(jobs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hymba_serve_stops_cleanly_on_sigterm(tokenizer_dir):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(hymba.__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "hymba", "serve", "--model", str(tokenizer_dir), "--port", str(port),
           "--max-batch", "4", "--max-model-len", "512", "--device", "cpu", "--drain-timeout", "20",
           "--served-model-name", "tiny", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        assert wait_until(healthy, 90, 0.2), "hymba serve did not come up"
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        assert client.completions.create(model="tiny", prompt="hello", max_tokens=3).usage.completion_tokens >= 1
        stream = client.completions.create(model="tiny", prompt="the quick", max_tokens=60, stream=True,
                                           extra_body={"ignore_eos": True})
        chunks = iter(stream)
        first = next(chunks)
        proc.send_signal(signal.SIGTERM)  # mid-stream: the request in flight still finishes
        rest = [first, *chunks]
        assert rest[-1].choices[0].finish_reason == "length"
        assert proc.wait(60) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_flags_are_checked_before_loading(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    for flags, message in ((["--port", "70000"], "--port"), (["--max-batch", "0"], "--max-batch"),
                           (["--api-key", " "], "--api-key")):
        assert main(["serve", "--model", str(tmp_path), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    with socket.socket() as taken:  # a port in use: one line, before the model loads
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--model", str(tmp_path), "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot listen on" in err and "\n" not in err

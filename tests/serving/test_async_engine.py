"""AsyncEngine on its own (no HTTP): a cancelled consumer aborts its request, shutdown drains or
aborts what is in flight and stops the thread, and outputs equal the engine's own."""

from __future__ import annotations

import asyncio

import pytest
from servekit import wait_until

from hymba.serving.async_engine import AsyncEngine, EngineShuttingDown
from hymba.serving.engine import Engine, EngineConfig, SamplingParams


@pytest.fixture
def engine(tiny_model, tokenizer):
    async_engine = AsyncEngine(Engine(tiny_model, tokenizer, EngineConfig(max_batch=4, max_model_len=2048)))
    yield async_engine
    async_engine.close()


def long_params() -> SamplingParams:
    return SamplingParams(max_tokens=2000, temperature=0, ignore_eos=True)


def test_outputs_are_the_engines(engine, tiny_model, tokenizer):
    prompts = [tokenizer.encode("the quick"), tokenizer.encode("lazy dog over the")]
    params = SamplingParams(max_tokens=9, temperature=0)

    async def run(ids):
        return [t async for out in engine.generate(ids, params) for t in out.new_token_ids]

    async def both():
        return await asyncio.gather(*(run(p) for p in prompts))

    got = asyncio.run(both())
    alone = Engine(tiny_model, tokenizer, EngineConfig(max_batch=1, max_model_len=2048))
    assert got == [alone.generate([p], params)[0] for p in prompts]


def test_a_cancelled_consumer_aborts_its_request(engine, tokenizer):
    async def consume(seen: asyncio.Event):
        async for _ in engine.generate(tokenizer.encode("hi"), long_params()):
            seen.set()

    async def main():
        seen = asyncio.Event()
        task = asyncio.create_task(consume(seen))
        await asyncio.wait_for(seen.wait(), 30)
        assert engine.stats()["slots_used"] == 1
        task.cancel()  # the HTTP client went away
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert wait_until(lambda: engine.stats()["slots_used"] == 0 and engine.stats()["in_flight"] == 0, 10)
    assert engine.stats()["outcomes"] == {"abort": 1}


def test_leaving_a_stream_early_aborts_it(engine, tokenizer):
    async def main():
        stream = await engine.submit(tokenizer.encode("hi"), long_params())
        async for _ in stream:
            break
        stream.abort()
        stream.abort()  # twice is harmless

    asyncio.run(main())
    assert wait_until(lambda: engine.stats()["slots_used"] == 0 and engine.stats()["state_bytes_in_use"] == 0, 10)


def test_shutdown_aborts_what_outlives_the_drain(engine, tokenizer):
    async def main():
        stream = await engine.submit(tokenizer.encode("hi"), long_params())
        first = await stream.__anext__()
        assert not first.finished
        await engine.shutdown(drain_timeout=0.2)
        rest = [out async for out in stream]
        return rest[-1]

    last = asyncio.run(main())
    assert last.finished and last.finish_reason == "abort"
    assert not engine.stats()["accepting"]
    with pytest.raises(EngineShuttingDown):
        asyncio.run(engine.submit([1, 5], SamplingParams()))

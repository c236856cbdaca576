"""The HTTP layer on a real loopback server, driven with the official ``openai`` client, over the
real engine on the tiny preset. Failures of one request or of the whole engine are injected with
the test-only fake of tests/serving/fake_engine.py."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import torch  # noqa: E402
from fake_engine import FakeEngine  # noqa: E402
from servekit import wait_until  # noqa: E402

from hymba.serving.async_engine import AsyncEngine, EngineShuttingDown  # noqa: E402
from hymba.serving.engine import Engine, EngineConfig, SamplingParams  # noqa: E402
from hymba.serving.server import ServerLimits  # noqa: E402

TIMEOUT = 30.0


def client(server, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)


class ThreadCheck:
    """Wraps an engine and records which threads call into it (the contract: only one)."""

    def __init__(self, engine) -> None:
        self.engine, self.threads = engine, set()

    def __getattr__(self, name):
        value = getattr(self.engine, name)
        if callable(value):
            def call(*args, **kwargs):
                self.threads.add(threading.get_ident())
                return value(*args, **kwargs)
            return call
        return value


class Backend:
    """Builds the engine under test and says what it must answer."""

    def __init__(self, tokenizer, model) -> None:
        self.tokenizer, self.model = tokenizer, model

    def engine(self, max_model_len: int = 256, **config) -> ThreadCheck:
        cfg = EngineConfig(max_model_len=max_model_len, **config)
        return ThreadCheck(Engine(self.model, self.tokenizer, cfg))

    def greedy(self, ids: list[int], max_tokens: int, ignore_eos: bool = False) -> tuple[str, list[int]]:
        """The greedy answer of ``model.generate`` for this prompt alone: its text (an incomplete
        last character held back, as the engine does) and its new tokens (a final EOS included)."""
        eos = self.tokenizer.eos_token_id
        out = self.model.generate(torch.tensor([ids]), max_new_tokens=max_tokens,
                                  eos_token_id=[] if ignore_eos else eos)[0, len(ids):].tolist()
        new = out[: out.index(eos) + 1] if eos in out and not ignore_eos else out
        shown = new[:-1] if new and new[-1] == eos and not ignore_eos else new
        return self.tokenizer.decode(shown).rstrip("\ufffd"), new

    def prompt_logprobs(self, ids: list[int]) -> list[float]:
        """log p(ids[i] | ids[:i]) for i >= 1, from one forward."""
        with torch.no_grad():
            logp = self.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        return [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


@pytest.fixture(scope="module")
def backend(tokenizer, tiny_model):
    return Backend(tokenizer, tiny_model)


@pytest.fixture
def real(backend):
    """The engine under test: the real one, 4 slots."""
    return backend.engine(max_batch=4)


def test_completion_matches_the_engine_and_counts_usage(serve, real, tokenizer, backend):
    server, engine = serve(real, tokenizer)
    prompt = "the quick brown"
    ids = tokenizer.encode(prompt)
    r = client(server).completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    text, new = backend.greedy(ids, 12)
    assert r.object == "text_completion" and r.model == "tiny" and r.id.startswith("cmpl-")
    assert r.choices[0].text == text
    assert r.choices[0].finish_reason == ("stop" if tokenizer.eos_token_id in new else "length")
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == len(new)
    assert r.usage.total_tokens == len(ids) + len(new)
    assert len(real.threads) == 1  # only the engine thread calls in


def test_stream_chunks_reassemble_to_the_whole_answer(serve, real, tokenizer):
    server, _ = serve(real, tokenizer)
    c = client(server)
    kwargs = dict(model="tiny", prompt="hello world", max_tokens=20, temperature=0, ignore_eos=True)
    whole = c.completions.create(**{k: v for k, v in kwargs.items() if k != "ignore_eos"},
                                 extra_body={"ignore_eos": True})
    chunks = list(c.completions.create(**{k: v for k, v in kwargs.items() if k != "ignore_eos"},
                                       extra_body={"ignore_eos": True}, stream=True,
                                       stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == whole.choices[0].text and len(text) > 0
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_echo_with_logprobs_is_what_lm_eval_reads(serve, real, tokenizer, backend):
    server, _ = serve(real, tokenizer)
    prompt = "the lazy dog"
    ids = tokenizer.encode(prompt)
    r = client(server).completions.create(model="tiny", prompt=ids, max_tokens=1, temperature=0,
                                          echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(isinstance(x, float) and x <= 0 for x in lp.token_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset)
    text = r.choices[0].text  # offsets index the returned text, where the BOS takes no room
    assert lp.tokens[0] == "<s>" and lp.text_offset[:2] == [0, 0]
    assert all(text[o:].startswith(t) for o, t in zip(lp.text_offset[1:len(ids)], lp.tokens[1:len(ids)]))
    # every prompt logprob is the model's log-probability of that token after the ones before it
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(backend.prompt_logprobs(ids), abs=1e-4)
    # greedy: the generated token is the most likely one (lm-eval's is_greedy test)
    assert lp.token_logprobs[-1] == pytest.approx(max(lp.top_logprobs[-1].values()))
    assert r.choices[0].text.startswith(tokenizer.decode(ids))
    # max_tokens=0 scores the prompt only
    r0 = client(server).completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=0)
    assert r0.choices[0].logprobs.token_logprobs == pytest.approx(lp.token_logprobs[:-1], abs=1e-5)
    assert r0.usage.completion_tokens == 0 and r0.choices[0].text == tokenizer.decode(ids)


def test_lm_eval_scoring_request_shape(serve, real, tokenizer, backend):
    """What lm-eval's local-completions sends to score: a batch of token-id prompts, max_tokens=1,
    echo, logprobs=1, temperature 0, a seed; it reads choices by index and token_logprobs[ctxlen:-1]."""
    server, _ = serve(real, tokenizer)
    batch = [tokenizer.encode("the quick brown fox"), tokenizer.encode("over the lazy dog, hello")]
    body = dict(model="tiny", prompt=batch, max_tokens=1, temperature=0, logprobs=1, seed=1234, echo=True)
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1]
    for ids, choice in zip(batch, choices):
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(ids) + 1 and len(lp["top_logprobs"]) == len(ids) + 1
        assert lp["token_logprobs"][1:len(ids)] == pytest.approx(backend.prompt_logprobs(ids), abs=1e-4)
        assert all(len(top) == 1 for top in lp["top_logprobs"][1:])


def test_a_batch_of_text_prompts(serve, real, tokenizer, backend):
    server, _ = serve(real, tokenizer)
    prompts = ["the quick", "lazy dog over"]
    r = client(server).completions.create(model="tiny", prompt=prompts, max_tokens=4, temperature=0)
    for prompt, choice in zip(prompts, sorted(r.choices, key=lambda c: c.index)):
        assert choice.text == backend.greedy(tokenizer.encode(prompt), 4)[0]


def test_a_chunked_body_over_the_limit_is_413(serve, real, tokenizer):
    server, engine = serve(real, tokenizer, limits=ServerLimits(max_body_bytes=1000))

    def body():  # no Content-Length: the size is counted as the body arrives
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'
    r = httpx.post(server.url + "/v1/completions", content=body(), timeout=TIMEOUT,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
    assert engine.stats()["in_flight"] == 0


def test_streamed_logprobs_and_echo_match_the_whole_answer(serve, real, tokenizer):
    server, _ = serve(real, tokenizer)
    c = client(server)
    kwargs = dict(model="tiny", prompt="hello world", max_tokens=6, temperature=0, echo=True, logprobs=2)
    whole = c.completions.create(**kwargs).choices[0]
    chunks = [ch.choices[0] for ch in c.completions.create(**kwargs, stream=True)]
    assert "".join(ch.text for ch in chunks) == whole.text
    tokens = [t for ch in chunks if ch.logprobs for t in ch.logprobs.tokens]
    offsets = [t for ch in chunks if ch.logprobs for t in ch.logprobs.text_offset]
    assert tokens == whole.logprobs.tokens and offsets == whole.logprobs.text_offset


def test_batch_of_prompts_with_n_choices(serve, real, tokenizer, backend):
    server, _ = serve(real, tokenizer)
    prompts = [tokenizer.encode("the quick"), tokenizer.encode("lazy dog over")]
    r = client(server).completions.create(model="tiny", prompt=prompts, max_tokens=5, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for p, prompt in enumerate(prompts):
        text, _ = backend.greedy(prompt, 5)
        assert r.choices[2 * p].text == r.choices[2 * p + 1].text == text
    assert r.usage.prompt_tokens == sum(len(p) for p in prompts)


def test_stop_strings_cut_the_text(serve, real, tokenizer):
    server, _ = serve(real, tokenizer)
    c = client(server)
    full = c.completions.create(model="tiny", prompt="fox jumps", max_tokens=30, temperature=0,
                                extra_body={"ignore_eos": True}).choices[0].text
    printable = [i for i in range(3, len(full) - 1) if full[i].isalnum()]
    assert printable, full
    cut = printable[0]
    stop = full[cut:cut + 2]
    r = c.completions.create(model="tiny", prompt="fox jumps", max_tokens=30, temperature=0, stop=[stop],
                             extra_body={"ignore_eos": True})
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = c.completions.create(model="tiny", prompt="fox jumps", max_tokens=30, temperature=0,
                                    stop=stop, stream=True, extra_body={"ignore_eos": True})
    assert "".join(ch.choices[0].text for ch in streamed) == r.choices[0].text


def test_sampling_is_seeded(serve, real, tokenizer):
    server, _ = serve(real, tokenizer)
    c = client(server)
    kw = dict(model="tiny", prompt="the quick", max_tokens=10, temperature=1.0, top_p=0.9,
              extra_body={"top_k": 20, "repetition_penalty": 1.2, "ignore_eos": True})
    a = c.completions.create(seed=7, **kw).choices[0].text
    assert c.completions.create(seed=7, **kw).choices[0].text == a
    hot = dict(model="tiny", prompt="the quick", max_tokens=10, temperature=2.0, extra_body={"ignore_eos": True})
    draws = {c.completions.create(seed=s, **hot).choices[0].text for s in range(8, 14)}
    assert len(draws) > 1


def test_chat_completion_stream_and_logprobs(serve, real, tokenizer, backend):
    server, _ = serve(real, tokenizer)
    c = client(server)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    kw = dict(model="tiny", messages=messages, max_tokens=10, temperature=0)
    whole = c.chat.completions.create(**kw, logprobs=True, top_logprobs=3)
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    text, new = backend.greedy(ids, 10)
    msg = whole.choices[0].message
    assert whole.object == "chat.completion" and msg.role == "assistant" and msg.content == text
    assert whole.usage.prompt_tokens == len(ids) and whole.usage.completion_tokens == len(new)
    content = whole.choices[0].logprobs.content
    assert len(content) == len(new) and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in content)  # greedy
    chunks = list(c.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == text
    assert chunks[-1].usage.completion_tokens == len(new)
    # max_completion_tokens, and a default that fits the context
    r = c.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=3, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_models_health_and_metrics(serve, real, tokenizer):
    server, engine = serve(real, tokenizer, limits=ServerLimits(max_model_len=1024))
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client(server).models.retrieve("tiny").id == "tiny"
    assert httpx.get(server.url + "/health", timeout=TIMEOUT).json() == {"status": "ok"}
    client(server).completions.create(model="tiny", prompt="hi", max_tokens=3, temperature=0)
    text = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples["hymba_batch_slots_total"] == 4
    assert samples["hymba_requests_running"] == 0
    assert samples["hymba_generation_tokens_total"] >= 1
    assert samples['hymba_http_responses_total{code="200"}'] >= 3
    assert sum(v for k, v in samples.items() if k.startswith("hymba_requests_finished_total")) >= 1
    for name in ("requests_waiting", "batch_occupancy", "state_bytes_in_use", "prefix_cache_hits_total",
                 "prefix_cache_misses_total", "generation_tokens_per_second"):
        assert f"hymba_{name}" in samples
        assert f"# TYPE hymba_{name} " in text
    assert samples["hymba_engine_prefill_steps_total"] >= 1 and samples["hymba_engine_decode_steps_total"] >= 1
    assert samples["hymba_engine_prefill_padded_tokens_total"] >= 1
    assert {f'hymba_engine_host_seconds_total{{phase="{p}"}}' for p in ("prefill", "decode", "collect")} <= set(samples)


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


BAD_REQUESTS = [
    ("not json", b"{bad", 400, None),
    ("an array", b"[1, 2]", 400, None),
    ("empty body", b"", 400, None),
    ("no model", {"prompt": "hi"}, 400, "model"),
    ("no prompt", {"model": "tiny"}, 400, "prompt"),
    ("bad temperature", {"model": "tiny", "prompt": "hi", "temperature": -1}, 400, "temperature"),
    ("bad top_p", {"model": "tiny", "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("prompt of bools", {"model": "tiny", "prompt": [True, False]}, 400, "prompt"),
    ("empty token list", {"model": "tiny", "prompt": []}, 400, "prompt"),
    ("token outside vocab", {"model": "tiny", "prompt": [5, 100000]}, 400, "prompt"),
    ("unknown model", {"model": "gpt-4", "prompt": "hi"}, 404, "model"),
    ("too many stops", {"model": "tiny", "prompt": "hi", "stop": ["a", "b", "c"]}, 400, "stop"),
    ("n too big", {"model": "tiny", "prompt": "hi", "n": 3}, 400, "n"),
    ("max_tokens too big", {"model": "tiny", "prompt": "hi", "max_tokens": 65}, 400, "max_tokens"),
    ("max_tokens 0 without echo", {"model": "tiny", "prompt": "hi", "max_tokens": 0}, 400, None),
    ("prompt too long", {"model": "tiny", "prompt": list(range(5, 45))}, 400, "prompt"),
    ("too many logprobs", {"model": "tiny", "prompt": "hi", "logprobs": 6}, 400, "logprobs"),
    ("penalty", {"model": "tiny", "prompt": "hi", "presence_penalty": 0.5}, 400, None),
    ("stream_options alone", {"model": "tiny", "prompt": "hi", "stream_options": {"include_usage": True}},
     400, None),
    ("body too large", {"model": "tiny", "prompt": "x" * 5000}, 413, None),
]


@pytest.mark.parametrize("name, body, status, param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_an_openai_error(serve, real, tokenizer, name, body, status, param):
    limits = ServerLimits(max_body_bytes=4096, max_prompt_tokens=32, max_tokens=64, max_stop=2, max_n=2,
                          max_logprobs=5)
    server, engine = serve(real, tokenizer, limits=limits)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + "/v1/completions", content=content, timeout=TIMEOUT,
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = error_of(r)
    if param is not None:
        assert err["param"] == param, err
    assert engine.stats()["in_flight"] == 0


def test_chat_and_route_errors(serve, real, tokenizer):
    server, _ = serve(real, tokenizer)
    post = lambda path, body: httpx.post(server.url + path, json=body, timeout=TIMEOUT)  # noqa: E731
    assert post("/v1/chat/completions", {"model": "tiny", "messages": []}).status_code == 400
    r = post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400 and "role" in error_of(r)["message"]
    r = post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                      "top_logprobs": 2})
    assert r.status_code == 400 and "logprobs" in error_of(r)["message"]
    r = post("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 255})  # over max_model_len
    assert r.status_code == 400 and "max_model_len" in error_of(r)["message"]
    assert error_of(httpx.get(server.url + "/v1/nothing", timeout=TIMEOUT))["code"] == "not_found"
    assert httpx.get(server.url + "/v1/models/other", timeout=TIMEOUT).status_code == 404
    r = httpx.get(server.url + "/v1/completions", timeout=TIMEOUT)
    assert r.status_code == 405 and error_of(r)
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client(server).completions.create(model="tiny", prompt="hi", temperature=5)


def test_api_key(serve, real, tokenizer):
    server, _ = serve(real, tokenizer, api_key="sekrit")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"}):
        r = httpx.get(server.url + "/v1/models", headers=headers, timeout=TIMEOUT)
        assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").completions.create(model="tiny", prompt="hi", max_tokens=2)
    r = client(server, key="sekrit").completions.create(model="tiny", prompt="hi", max_tokens=2)
    assert r.usage.completion_tokens >= 1
    assert httpx.get(server.url + "/health", timeout=TIMEOUT).status_code == 200  # probes stay open


def test_queue_full_is_429(serve, tokenizer, backend):
    server, engine = serve(backend.engine(max_batch=1, max_queue=1, max_model_len=2048), tokenizer)
    c = client(server)
    first = c.completions.create(model="tiny", prompt="hi", max_tokens=2000, stream=True,
                                 extra_body={"ignore_eos": True})
    next(iter(first))  # running: the one slot is taken
    waiting = threading.Thread(target=lambda: c.completions.create(model="tiny", prompt="hi", max_tokens=2),
                               daemon=True)
    waiting.start()
    assert wait_until(lambda: engine.stats()["waiting"] == 1)  # the queue (of one) is full
    with pytest.raises(openai.RateLimitError) as info:
        c.completions.create(model="tiny", prompt="hi", max_tokens=2)
    assert info.value.status_code == 429 and info.value.body["code"] == "queue_full"
    first.close()
    waiting.join(TIMEOUT)
    assert not waiting.is_alive()
    assert wait_until(lambda: engine.stats()["slots_used"] == 0 and engine.stats()["in_flight"] == 0)


def test_cancelled_stream_frees_its_slot(serve, tokenizer, backend):
    server, engine = serve(backend.engine(max_batch=2, max_model_len=2048), tokenizer)
    stream = client(server).completions.create(model="tiny", prompt="the quick", max_tokens=2000,
                                               stream=True, extra_body={"ignore_eos": True})
    it = iter(stream)
    for _ in range(3):
        next(it)
    assert engine.stats()["slots_used"] == 1 and engine.stats()["state_bytes_in_use"] > 0
    stream.close()  # the client goes away mid-stream
    assert wait_until(lambda: engine.stats()["slots_used"] == 0 and engine.stats()["in_flight"] == 0, 10)
    assert engine.stats()["outcomes"].get("abort") == 1
    assert engine.stats()["state_bytes_in_use"] == 0


def test_dropped_non_streamed_request_frees_its_slot(serve, tokenizer, backend):
    server, engine = serve(backend.engine(max_batch=2, max_model_len=2048), tokenizer)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", timeout=httpx.Timeout(5.0, read=0.5),
                   json={"model": "tiny", "prompt": "hi", "max_tokens": 2000, "ignore_eos": True})
    assert wait_until(lambda: engine.stats()["in_flight"] == 0 and engine.stats()["slots_used"] == 0, 10)
    assert engine.stats()["outcomes"].get("abort") == 1
    assert engine.stats()["state_bytes_in_use"] == 0


def test_a_failing_request_fails_alone(serve, tokenizer):
    poison = tokenizer.encode("zzz", add_bos=False)[0]
    fake = FakeEngine(tokenizer, EngineConfig(max_batch=4), poison_id=poison)
    server, engine = serve(fake, tokenizer)
    c = client(server)
    with pytest.raises(openai.InternalServerError) as info:
        c.completions.create(model="tiny", prompt=[1, poison, 5], max_tokens=4)
    assert "poisoned" in info.value.body["message"]
    with pytest.raises(openai.APIError):  # in a stream: an error event after the 200
        list(c.completions.create(model="tiny", prompt=[1, poison, 5], max_tokens=4, stream=True))
    assert c.completions.create(model="tiny", prompt="hi", max_tokens=4).usage.completion_tokens >= 1
    assert httpx.get(server.url + "/health", timeout=TIMEOUT).status_code == 200


def test_an_engine_failure_fails_requests_instead_of_hanging(serve, tokenizer):
    fake = FakeEngine(tokenizer, EngineConfig(max_batch=4), explode_after=3)
    server, engine = serve(fake, tokenizer)
    c = client(server)
    with pytest.raises(openai.InternalServerError) as info:
        c.completions.create(model="tiny", prompt="hi", max_tokens=50, extra_body={"ignore_eos": True})
    assert "injected engine failure" in info.value.body["message"]
    with pytest.raises(openai.InternalServerError):
        c.completions.create(model="tiny", prompt="hi", max_tokens=2)
    r = httpx.get(server.url + "/health", timeout=TIMEOUT)
    assert r.status_code == 503 and error_of(r)["code"] == "engine_failed"


def test_graceful_shutdown_drains_then_refuses(serve, tokenizer, backend):
    server, engine = serve(backend.engine(max_batch=2, max_model_len=2048), tokenizer)
    c = client(server)
    short = c.completions.create(model="tiny", prompt="hi", max_tokens=10, stream=True,
                                 extra_body={"ignore_eos": True})
    long = c.completions.create(model="tiny", prompt="hi", max_tokens=2000, stream=True,
                                extra_body={"ignore_eos": True})
    next(iter(short)), next(iter(long))
    done = threading.Event()
    threading.Thread(target=lambda: (asyncio.run(engine.shutdown(drain_timeout=2.0)), done.set()),
                     daemon=True).start()
    assert wait_until(lambda: not engine.stats()["accepting"], 5)
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "hi"}, timeout=TIMEOUT)
    assert r.status_code == 503 and error_of(r)["code"] == "shutting_down"
    assert httpx.get(server.url + "/health", timeout=TIMEOUT).status_code == 503
    rest = [ch.choices[0] for ch in short]  # in flight: it finishes within the drain time
    assert rest[-1].finish_reason == "length"
    with pytest.raises(openai.APIError):  # the long one is aborted: an error event ends its stream
        for _ in long:
            pass
    assert done.wait(15)
    assert engine.stats()["in_flight"] == 0


def test_engine_thread_sleeps_when_idle(tokenizer):
    fake = FakeEngine(tokenizer)
    engine = AsyncEngine(fake)
    try:
        async def one():
            return [out async for out in engine.generate(tokenizer.encode("hi"),
                                                         SamplingParams(max_tokens=3, temperature=0))]
        outs = asyncio.run(one())
        assert outs[-1].finished and sum(len(o.new_token_ids) for o in outs) >= 1
        steps = engine.stats()["steps_total"]
        threading.Event().wait(0.3)
        assert engine.stats()["steps_total"] == steps  # no stepping (no busy loop) while idle
    finally:
        engine.close()
    with pytest.raises(EngineShuttingDown):
        asyncio.run(engine.submit([1, 2], SamplingParams()))

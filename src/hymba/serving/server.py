"""The OpenAI-compatible HTTP server: a FastAPI app over an :class:`AsyncEngine`.

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (the
checkpoint's chat template), ``GET /health``, ``GET /metrics`` (Prometheus text format).
``stream=true`` answers with server-sent events in OpenAI's format (``data: {...}`` per chunk,
then ``data: [DONE]``). With ``api_key`` set, the ``/v1`` routes need ``Authorization: Bearer KEY``
(``/health`` and ``/metrics`` stay open for probes and scrapers).

Every error is OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a
malformed or invalid request (including pydantic's validation errors, rewritten) or one over a
limit, 401 for a missing or wrong key, 404 for an unknown model or route, 413 for a body over
``limits.max_body_bytes``, 429 when the engine's queue is full, 500 when the engine fails, 503
while shutting down. Once a stream has started (status 200 sent), an error arrives as one
``data: {"error": ...}`` event before ``data: [DONE]``.

A client that goes away (a closed stream, or a dropped connection while waiting for a
non-streamed answer) aborts its requests, so the engine frees their slots at its next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..model import InputError
from ..tokenizer import TokenizerError
from .async_engine import AsyncEngine, EngineError, EngineShuttingDown, RequestStream
from .engine import QueueFull, SamplingParams
from .protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ErrorBody,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenLogprob,
    TopLogprob,
    Usage,
)

# Hymba's chat format opens the next turn with "<extra_id_1>"; a reply stops there (as `hymba chat`).
CHAT_STOPS = ("<extra_id_1>",)


@dataclass
class ServerLimits:
    """What one request may ask for; beyond any of these it gets a 400 (413 for the body)."""

    max_body_bytes: int = 4 << 20
    max_prompt_tokens: int | None = None  # None: only the engine's max_model_len applies
    max_tokens: int = 4096                # new tokens per choice
    max_stop: int = 8                     # stop strings
    max_n: int = 8                        # choices per prompt
    max_prompts: int = 64                 # prompts in one completions request (a batch)
    max_logprobs: int = 20                # alternatives per position
    max_model_len: int | None = None      # prompt + new tokens (the chat default for max_tokens)


class APIError(Exception):
    """An error answer: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        err = ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=err).model_dump()

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


class _ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


@dataclass
class _Choice:
    """What one request (one choice of the answer) produced so far."""

    index: int
    prompt_ids: list[int]
    prompt_text: str
    stream: RequestStream | None = None
    pieces: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    prompt_logprobs: list[Any] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, out) -> None:
        self.pieces.append(out.new_text)
        self.token_ids.extend(out.new_token_ids)
        if out.logprobs:
            self.logprobs.extend(out.logprobs)
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = list(out.prompt_logprobs)
        self.prompt_tokens = out.prompt_tokens
        self.completion_tokens = out.completion_tokens
        if out.finished:
            self.finish_reason = out.finish_reason


class _Metrics:
    """Counters the server keeps itself (the engine's numbers come from its stats)."""

    def __init__(self) -> None:
        self.responses: Counter[str] = Counter()  # by HTTP status
        self.started = time.time()


def build_app(engine: AsyncEngine, tokenizer, model_name: str, api_key: str | None = None,
              limits: ServerLimits | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` under ``model_name``; see the module docstring."""
    limits = limits or ServerLimits()
    model_name = str(model_name)
    metrics = _Metrics()
    created = int(time.time())
    app = FastAPI(title="hymba", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_StatusCounter, counter=metrics.responses)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return APIError(404, f"no route {request.method} {request.url.path}", code="not_found").response()
        if exc.status_code == 405:
            return APIError(405, f"method {request.method} not allowed on {request.url.path}",
                            code="method_not_allowed").response()
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(_ClientGone)
    async def _client_gone(request: Request, exc: _ClientGone):
        return Response(status_code=499)  # nobody reads it; counted in /metrics

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").response()

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise APIError(401, "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid API key", code="invalid_api_key")

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{model_name}'",
                           param="model", code="model_not_found")

    def card() -> ModelCard:
        return ModelCard(id=model_name, created=created, max_model_len=limits.max_model_len)

    @app.get("/health")
    async def health():
        if engine.failure is not None:
            raise APIError(503, engine.failure, "server_error", code="engine_failed")
        if not engine.accepting:
            raise APIError(503, "the server is shutting down", "server_error", code="shutting_down")
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        text = render_metrics(engine.stats(), metrics.responses)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request)
        return ModelList(data=[card()]).model_dump()

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request):
        authorize(request)
        check_model(name)
        return card().model_dump()

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        req = _parse(CompletionRequest, await _read_body(request, limits.max_body_bytes))
        check_model(req.model)
        prompts = req.prompts()
        if len(prompts) > limits.max_prompts:
            raise APIError(400, f"at most {limits.max_prompts} prompts per request, got {len(prompts)}",
                           param="prompt")
        _check_common(req, limits)
        if req.logprobs is not None and req.logprobs > limits.max_logprobs:
            raise APIError(400, f"logprobs must be at most {limits.max_logprobs}", param="logprobs")
        max_tokens = req.max_tokens if req.max_tokens is not None else 16  # 0: score the prompt only
        _check_max_tokens(max_tokens, limits, "max_tokens")
        choices: list[_Choice] = []
        for p, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                ids, text = _encode(tokenizer, prompt), prompt
            else:
                ids, text = list(prompt), tokenizer.decode(prompt)
            _check_prompt(ids, limits)
            for i in range(req.n):
                choices.append(_Choice(p * req.n + i, ids, text))
        prompt_logprobs = req.echo and (req.logprobs is not None or max_tokens == 0)
        params = [_params(req, max_tokens, req.stop_list(), (), req.logprobs, prompt_logprobs, c.index % req.n)
                  for c in choices]
        await _submit_all(engine, choices, params)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            gen = _completion_events(req, choices, tokenizer, rid, now)
            return _sse(gen, choices)
        await _collect(request, choices)
        out = [CompletionChoice(index=c.index, text=(c.prompt_text if req.echo else "") + "".join(c.pieces),
                                logprobs=_completion_logprobs(tokenizer, c, req.echo)[0]
                                if req.logprobs is not None else None,
                                finish_reason=c.finish_reason)
               for c in choices]
        return CompletionResponse(id=rid, created=now, model=model_name, choices=out,
                                  usage=_usage(choices, req.n)).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        req = _parse(ChatCompletionRequest, await _read_body(request, limits.max_body_bytes))
        check_model(req.model)
        _check_common(req, limits)
        if req.top_logprobs is not None and req.top_logprobs > limits.max_logprobs:
            raise APIError(400, f"top_logprobs must be at most {limits.max_logprobs}", param="top_logprobs")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        try:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except TokenizerError as exc:
            raise APIError(400, f"cannot apply the chat template: {exc}", param="messages") from None
        _check_prompt(ids, limits)
        max_tokens = req.token_limit()
        if max_tokens is None:  # as much as fits
            max_tokens = limits.max_tokens
            if limits.max_model_len is not None:
                max_tokens = min(max_tokens, limits.max_model_len - len(ids))
                if max_tokens < 1:
                    raise APIError(400, f"the conversation ({len(ids)} tokens) leaves no room to answer "
                                   f"within max_model_len {limits.max_model_len}", param="messages",
                                   code="context_length_exceeded")
        _check_max_tokens(max_tokens, limits, "max_completion_tokens" if req.max_completion_tokens else "max_tokens")
        stop_ids = tuple(t for t in (tokenizer.token_to_id(s) for s in CHAT_STOPS) if t is not None)
        stops = req.stop_list() + [s for s in CHAT_STOPS if tokenizer.token_to_id(s) is None]
        k = (req.top_logprobs or 0) if req.logprobs else None
        choices = [_Choice(i, ids, "") for i in range(req.n)]
        params = [_params(req, max_tokens, stops, stop_ids, k, False, i) for i in range(req.n)]
        await _submit_all(engine, choices, params)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return _sse(_chat_events(req, choices, tokenizer, rid, now), choices)
        await _collect(request, choices)
        out = [ChatChoice(index=c.index, message=AssistantMessage(content="".join(c.pieces)),
                          logprobs=_chat_logprobs(tokenizer, c) if req.logprobs else None,
                          finish_reason=c.finish_reason) for c in choices]
        return ChatCompletionResponse(id=rid, created=now, model=model_name, choices=out,
                                      usage=_usage(choices, req.n)).model_dump()

    return app


# -- request handling ---------------------------------------------------------------------------
async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise APIError(413, f"the request body is over {limit} bytes", code="request_too_large")
        except ValueError:
            raise APIError(400, "bad Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body is over {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(model: type[BaseModel], body: bytes):
    if not body.strip():
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _validation_error(exc: ValidationError) -> APIError:
    """pydantic's errors as one OpenAI error: every problem in the message, the first one's field
    as ``param``. Union members' locations (``str``, ``list[int]``...) are left out of the path."""
    parts, first = [], None
    for err in exc.errors(include_url=False):
        loc = [str(x) for x in err["loc"] if not (isinstance(x, str) and ("[" in x or x in ("str", "int", "float", "bool")))]
        path = ".".join(loc)
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {message}" if path else message)
        first = first or path or None
    unique = list(dict.fromkeys(parts))
    return APIError(400, "; ".join(unique[:5]) + ("; ..." if len(unique) > 5 else ""), param=first)


def _check_common(req, limits: ServerLimits) -> None:
    if req.n > limits.max_n:
        raise APIError(400, f"n must be at most {limits.max_n}", param="n")
    stops = req.stop_list()
    if len(stops) > limits.max_stop:
        raise APIError(400, f"at most {limits.max_stop} stop strings, got {len(stops)}", param="stop")
    if any(not s for s in stops):
        raise APIError(400, "a stop string is empty", param="stop")


def _check_max_tokens(n: int, limits: ServerLimits, name: str) -> None:
    if n > limits.max_tokens:
        raise APIError(400, f"{name} must be at most {limits.max_tokens}, got {n}", param=name)


def _check_prompt(ids: Sequence[int], limits: ServerLimits) -> None:
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    if limits.max_prompt_tokens is not None and len(ids) > limits.max_prompt_tokens:
        raise APIError(400, f"the prompt has {len(ids)} tokens; at most {limits.max_prompt_tokens} are allowed",
                       param="prompt", code="context_length_exceeded")


def _encode(tokenizer, text: str) -> list[int]:
    try:
        return tokenizer.encode(text)
    except TokenizerError as exc:
        raise APIError(400, str(exc), param="prompt") from None


def _params(req, max_tokens: int, stops: list[str], stop_ids: tuple[int, ...], logprobs: int | None,
            prompt_logprobs: bool, choice: int) -> SamplingParams:
    seed = None if req.seed is None else (req.seed + choice) % 2**64  # n choices: n different draws
    top_k = req.top_k if req.top_k is not None and req.top_k > 0 else 0
    try:
        return SamplingParams(
            max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=top_k,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            seed=seed, stop=tuple(stops), stop_token_ids=stop_ids, ignore_eos=req.ignore_eos,
            logprobs=logprobs, prompt_logprobs=prompt_logprobs)
    except InputError as exc:
        raise APIError(400, str(exc)) from None


async def _submit_all(engine: AsyncEngine, choices: list[_Choice], params: list[SamplingParams]) -> None:
    """Admit every choice's request, or none: on the first refusal the admitted ones are aborted."""
    try:
        for choice, p in zip(choices, params):
            choice.stream = await engine.submit(choice.prompt_ids, p)
    except BaseException as exc:
        for choice in choices:
            if choice.stream is not None:
                choice.stream.abort()
        if isinstance(exc, Exception):
            raise _engine_error(exc) from None
        raise


def _engine_error(exc: BaseException) -> BaseException:
    if isinstance(exc, APIError | asyncio.CancelledError):
        return exc
    if isinstance(exc, InputError):
        # the engine's messages start with the setting at fault; the rest concern the prompt
        message = str(exc)
        named = next((f for f in ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
                                  "seed", "stop", "logprobs") if message.startswith(f)), None)
        return APIError(400, message, param=named or "prompt")
    if isinstance(exc, QueueFull):
        return APIError(429, f"the server is busy (request queue full): {exc}".rstrip(": "),
                        "rate_limit_error", code="queue_full")
    if isinstance(exc, EngineShuttingDown):
        return APIError(503, str(exc), "server_error", code="shutting_down")
    if isinstance(exc, EngineError):
        return APIError(500, str(exc), "server_error", code="engine_failed")
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


def _finish_error(choice: _Choice, out) -> APIError | None:
    """The error of a request that ended without an answer (its own error, or a shutdown abort)."""
    if out.finish_reason == "error":
        return APIError(500, f"the request failed: {out.error or 'unknown error'}", "server_error",
                        code="request_failed")
    if out.finish_reason == "abort":
        return APIError(503, "the request was cancelled (the server is shutting down)", "server_error",
                        code="shutting_down")
    return None


async def _merged(choices: list[_Choice]) -> AsyncIterator[tuple[_Choice, Any]]:
    """Outputs of all choices' streams in arrival order, as (choice, output); raises the first
    error; closing it early aborts every request still running."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(choice: _Choice) -> None:
        try:
            async for out in choice.stream:
                queue.put_nowait((choice, out))
        except Exception as exc:  # EngineError / EngineShuttingDown from the engine thread
            queue.put_nowait((choice, exc))

    tasks = [asyncio.ensure_future(pump(c)) for c in choices]
    try:
        remaining = len(choices)
        while remaining:
            choice, item = await queue.get()
            if isinstance(item, Exception):
                raise _engine_error(item)
            yield choice, item
            if item.finished:
                remaining -= 1
    finally:
        for task in tasks:
            task.cancel()
        for choice in choices:
            choice.stream.abort()


async def _collect(request: Request, choices: list[_Choice]) -> None:
    """Run every choice to the end, or abort them all when the client disconnects first."""

    async def run() -> None:
        agen = _merged(choices)
        try:
            async for choice, out in agen:
                choice.add(out)
                if out.finished and (err := _finish_error(choice, out)) is not None:
                    raise err
        finally:
            await agen.aclose()

    work = asyncio.ensure_future(run())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            work.cancel()
        gone.cancel()
    if not work.done() or work.cancelled():
        try:
            await work
        except asyncio.CancelledError:
            pass
        raise _ClientGone
    work.result()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _sse(events: AsyncIterator[dict], choices: list[_Choice]) -> StreamingResponse:
    async def body():
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except APIError as exc:
            yield f"data: {json.dumps(exc.body(), ensure_ascii=False)}\n\n"
        finally:  # a client that went away cancels this generator: free the slots first
            for choice in choices:
                choice.stream.abort()
            await events.aclose()
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- completions --------------------------------------------------------------------------------
async def _completion_events(req: CompletionRequest, choices: list[_Choice], tokenizer, rid: str,
                             created: int) -> AsyncIterator[dict]:
    usage_wanted = req.stream_options is not None and req.stream_options.include_usage
    extra = {"usage": None} if usage_wanted else {}

    def chunk(index: int, text: str, logprobs, finish) -> dict:
        choice = CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish)
        return {"id": rid, "object": "text_completion", "created": created, "model": req.model,
                "choices": [choice.model_dump()], **extra}

    agen = _merged(choices)
    offsets = {c.index: None for c in choices}
    try:
        async for choice, out in agen:
            first = offsets[choice.index] is None
            before = len(choice.token_ids)
            choice.add(out)
            if out.finished and (err := _finish_error(choice, out)) is not None:
                raise err
            text = out.new_text
            if first and req.echo:
                text = choice.prompt_text + text
            logprobs = None
            if req.logprobs is not None:
                logprobs, offsets[choice.index] = _completion_logprobs(
                    tokenizer, choice, req.echo and first, start=before, offset=offsets[choice.index])
            if offsets[choice.index] is None:
                offsets[choice.index] = 0 if req.echo else len(choice.prompt_text)
            has_tokens = logprobs is not None and logprobs.tokens
            if text or has_tokens or out.finished or first:
                yield chunk(choice.index, text, logprobs, choice.finish_reason if out.finished else None)
    finally:
        await agen.aclose()
    if usage_wanted:
        yield {"id": rid, "object": "text_completion", "created": created, "model": req.model,
               "choices": [], "usage": _usage(choices, req.n).model_dump()}


def _completion_logprobs(tokenizer, choice: _Choice, echo: bool, start: int = 0,
                         offset: int | None = None) -> tuple[CompletionLogprobs, int]:
    """The legacy format: tokens, token_logprobs, top_logprobs, text_offset; and where the text
    after these tokens starts. With ``echo`` the prompt's tokens come first (the first one has no
    logprob). ``start`` picks the generated tokens from that index on (a stream's chunk);
    ``offset`` is where its text starts. Offsets index the returned text, where special tokens
    (a BOS) take no room, though ``tokens`` names them."""
    ids: list[int] = []
    entries: list[Any] = []
    context: list[int] = []
    if echo:
        ids += choice.prompt_ids
        entries += choice.prompt_logprobs or [None] * len(choice.prompt_ids)
    else:
        end = len(choice.prompt_ids) + start
        context = (choice.prompt_ids + choice.token_ids)[max(0, end - 4):end]
    gen = choice.token_ids[start:]
    ids += gen
    entries += choice.logprobs[start:start + len(gen)]
    tokens = token_strings(tokenizer, ids, context)
    pos = offset if offset is not None else (0 if echo else len(choice.prompt_text))
    offsets = []
    for piece in token_strings(tokenizer, ids, context, skip_special_tokens=True):
        offsets.append(pos)
        pos += len(piece)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[None if e is None else float(e.logprob) for e in entries],
        top_logprobs=[None if e is None else _top_dict(tokenizer, e.top) for e in entries],
        text_offset=offsets), pos


def _top_dict(tokenizer, top) -> dict[str, float]:
    out: dict[str, float] = {}
    for token_id, logprob in top:
        out.setdefault(token_strings(tokenizer, [token_id])[0], float(logprob))
    return out


def token_strings(tokenizer, ids: Sequence[int], context: Sequence[int] = (),
                  skip_special_tokens: bool = False) -> list[str]:
    """Each token's text as it reads after the tokens before it (a few of them are enough for
    byte-level and SentencePiece decoders, which drop or merge leading spaces at the start)."""
    out = []
    window = list(context)[-4:]
    for token in ids:
        before = tokenizer.decode(window, skip_special_tokens=skip_special_tokens) if window else ""
        both = tokenizer.decode(window + [token], skip_special_tokens=skip_special_tokens)
        out.append(both[len(before):] if both.startswith(before) else
                   tokenizer.decode([token], skip_special_tokens=skip_special_tokens))
        window = (window + [token])[-4:]
    return out


def _usage(choices: list[_Choice], n: int) -> Usage:
    prompt = sum(len(c.prompt_ids) for c in choices[::n])  # each prompt once, whatever n
    completion = sum(c.completion_tokens for c in choices)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


# -- chat ---------------------------------------------------------------------------------------
async def _chat_events(req: ChatCompletionRequest, choices: list[_Choice], tokenizer, rid: str,
                       created: int) -> AsyncIterator[dict]:
    usage_wanted = req.stream_options is not None and req.stream_options.include_usage

    def chunk(choice: ChatChunkChoice) -> dict:
        body = ChatCompletionChunk(id=rid, created=created, model=req.model, choices=[choice]).model_dump()
        delta = body["choices"][0]["delta"]
        body["choices"][0]["delta"] = {k: v for k, v in delta.items() if v is not None}  # as OpenAI's
        if not usage_wanted:
            body.pop("usage")
        return body

    for c in choices:
        yield chunk(ChatChunkChoice(index=c.index, delta=ChatDelta(role="assistant", content="")))
    agen = _merged(choices)
    try:
        async for choice, out in agen:
            before = len(choice.token_ids)
            choice.add(out)
            if out.finished and (err := _finish_error(choice, out)) is not None:
                raise err
            logprobs = _chat_logprobs(tokenizer, choice, before) if req.logprobs and out.new_token_ids else None
            if out.new_text or logprobs is not None:
                yield chunk(ChatChunkChoice(index=choice.index, delta=ChatDelta(content=out.new_text),
                                            logprobs=logprobs))
            if out.finished:
                yield chunk(ChatChunkChoice(index=choice.index, delta=ChatDelta(),
                                            finish_reason=choice.finish_reason))
    finally:
        await agen.aclose()
    if usage_wanted:
        body = ChatCompletionChunk(id=rid, created=created, model=req.model, choices=[],
                                   usage=_usage(choices, req.n)).model_dump()
        yield body


def _chat_logprobs(tokenizer, choice: _Choice, start: int = 0) -> ChatLogprobs:
    ids = choice.token_ids[start:]
    context = (choice.prompt_ids + choice.token_ids)[: len(choice.prompt_ids) + start]
    tokens = token_strings(tokenizer, ids, context[-4:])
    content = []
    for token, entry in zip(tokens, choice.logprobs[start:start + len(ids)]):
        top = [TopLogprob(token=t, logprob=float(lp), bytes=list(t.encode("utf-8")))
               for t, lp in ((token_strings(tokenizer, [i])[0], lp) for i, lp in entry.top)]
        content.append(TokenLogprob(token=token, logprob=float(entry.logprob),
                                    bytes=list(token.encode("utf-8")), top_logprobs=top))
    return ChatLogprobs(content=content)


# -- metrics ------------------------------------------------------------------------------------
def render_metrics(stats: dict[str, Any], responses: Counter[str]) -> str:
    """The Prometheus text exposition format (version 0.0.4) of the engine's stats."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP hymba_{name} {help_text}")
        lines.append(f"# TYPE hymba_{name} {kind}")
        for labels, value in samples:
            tag = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"hymba_{name}{{{tag}}} {_number(value)}" if tag else f"hymba_{name} {_number(value)}")

    def gauge(name: str, help_text: str, key: str) -> None:
        metric(name, "gauge", help_text, [({}, float(stats.get(key, 0) or 0))])

    def counter(name: str, help_text: str, key: str) -> None:
        metric(name, "counter", help_text, [({}, float(stats.get(key, 0) or 0))])

    gauge("requests_running", "Requests holding a decode slot.", "running")
    gauge("requests_waiting", "Requests queued for a slot.", "waiting")
    gauge("requests_in_flight", "Requests admitted and not yet answered.", "in_flight")
    gauge("batch_slots_total", "Decode slots.", "slots_total")
    gauge("batch_slots_used", "Decode slots in use.", "slots_used")
    total = float(stats.get("slots_total", 0) or 0)
    metric("batch_occupancy", "gauge", "Fraction of decode slots in use.",
           [({}, float(stats.get("slots_used", 0) or 0) / total if total else 0.0)])
    gauge("batch_slots_used_peak", "Most decode slots in use at once since start.", "peak_slots_used")
    gauge("state_bytes_in_use", "Bytes of per-request state (caches) held by running requests.",
          "state_bytes_in_use")
    gauge("prefix_cache_bytes", "Bytes held by prefix-state snapshots.", "prefix_bytes")
    counter("prefix_cache_hits_total", "Requests that restored a prefix-state snapshot.", "prefix_hits")
    counter("prefix_cache_misses_total", "Requests that found no prefix-state snapshot.", "prefix_misses")
    counter("generation_tokens_total", "Output tokens generated.", "tokens_generated_total")
    counter("prompt_tokens_total", "Prompt tokens prefilled.", "prompt_tokens_total")
    counter("engine_steps_total", "Scheduler steps.", "steps_total")
    counter("engine_prefill_steps_total", "Prefill forwards (one per step that stored prompt tokens).",
            "prefill_steps_total")
    counter("engine_prefill_padded_tokens_total", "Tokens computed by prefill forwards, padding included.",
            "prefill_padded_tokens_total")
    counter("engine_decode_steps_total", "Decode steps of the running batch.", "decode_steps_total")
    counter("engine_decode_device_seconds_total", "GPU seconds of the decode steps (0 on a CPU).",
            "device_decode_s")
    counter("engine_decode_bytes_total", "Bytes the decode steps had to move at least (weights, running "
            "requests' state).", "decode_bytes_total")
    metric("engine_host_seconds_total", "counter",
           "Engine-thread seconds queueing prefills and decode steps and reading chosen tokens, by phase.",
           [({"phase": k.removeprefix("host_").removesuffix("_s")}, float(stats.get(k, 0) or 0))
            for k in ("host_prefill_s", "host_decode_s", "host_collect_s")])
    gauge("generation_tokens_per_second", "Output tokens per second over the last seconds.",
          "tokens_per_second")
    metric("requests_finished_total", "counter", "Engine requests finished, by finish reason.",
           [({"reason": k}, v) for k, v in sorted((stats.get("outcomes") or {}).items())])
    metric("http_responses_total", "counter", "HTTP responses, by status code.",
           [({"code": k}, v) for k, v in sorted(responses.items())])
    metric("engine_up", "gauge", "1 while the engine works and admits requests.",
           [({}, 1.0 if stats.get("accepting") else 0.0)])
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


class _StatusCounter:
    """ASGI middleware counting responses by status (without wrapping streams in tasks)."""

    def __init__(self, app, counter: Counter[str]) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.counter[str(message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


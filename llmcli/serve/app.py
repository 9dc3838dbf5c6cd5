"""The ASGI application: OpenAI's and Anthropic's HTTP APIs over every llmcli model.

Routes are thin: authenticate, parse the wire's request into a :class:`Chat`
(:mod:`llmcli.serve.protocol`), prepare the response through :func:`llmcli.api.prompt` (every
check that needs no network, so a refused prefill is a 400 before any upstream call), run it
on a thread (:mod:`llmcli.serve.exchange`) and render the normalized text in the wire's
format. The reply's text is the continuation, computed from the normalized text, so every
capability (eats, echoes, emulated) gives the same content.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.responses import Response as HTTPResponse

from llmcli import api, config
from llmcli.capabilities import PrefillSupport
from llmcli.config import scrub
from llmcli.models import Conversation, Logger, Model, Response, Usage
from llmcli.serve.errors import WireError, anthropic_body, from_exception, openai_body
from llmcli.serve.exchange import STOP_WAIT, Exchange, model_slots, stop_all
from llmcli.serve.guard import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_READ_TIMEOUT,
    Guard,
    choose_model,
    refuse_loop,
    served_models,
)
from llmcli.serve.protocol import (
    AnthropicRequest,
    Chat,
    OpenAIRequest,
    anthropic_chat,
    openai_chat,
    parse,
)

__all__ = ["ServeSettings", "create_app", "shutting_down_body"]


@dataclass
class ServeSettings:
    #: The model for requests that name none (None: llmcli's default model).
    default_model: str | None = None
    #: Required as ``Authorization: Bearer KEY`` (or ``x-api-key`` on the Anthropic wire).
    api_key: str | None = None
    #: Log every exchange to the SQLite log (unless ``llmcli logs off``).
    log: bool = True
    #: The log every exchange is written to (``llmcli.log.SharedLog``: one connection,
    #: checked writable at start); None: each exchange opens the log itself.
    log_to: Logger | None = None
    #: Where one line per exchange goes (stderr by default).
    say: Callable[[str], None] = field(default=lambda line: _stderr(line))
    # -- what a request must pass (llmcli.serve.guard) --
    #: The model ids clients may use (None: every model); the default model is one.
    allowed_models: tuple[str, ...] | None = None
    #: Host and Origin names allowed besides loopback ones ("*": any, behind a proxy).
    allowed_hosts: tuple[str, ...] = ()
    #: The largest request body, in bytes (413 beyond).
    max_body: int = DEFAULT_MAX_BODY
    #: Model requests answered at once (429 beyond).
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    #: Seconds a client has to send its request's headers, then its body.
    read_timeout: float = DEFAULT_READ_TIMEOUT
    #: The (host, port) the server listens on, once bound: a model whose URL is this
    #: address is refused, and a non-loopback host is an allowed Host.
    bound: tuple[str, int] | None = None


def _stderr(line: str) -> None:
    sys.stderr.write(f"llmcli serve: {line}\n")
    sys.stderr.flush()


#: What a request still running when the server stops (after its grace period) gets.
SHUTTING_DOWN = WireError(503, "llmcli serve is stopping; the reply was cut short",
                          "server_error", "shutting_down")

# -- stop reasons ---------------------------------------------------------------------------

_OPENAI_FINISH = {"end_turn": "stop", "stop": "stop", "stop_sequence": "stop",
                  "max_tokens": "length", "length": "length", "tool_use": "tool_calls",
                  "content_filter": "content_filter"}
_ANTHROPIC_STOP = {"end_turn": "end_turn", "stop": "end_turn", "stop_sequence": "stop_sequence",
                   "max_tokens": "max_tokens", "length": "max_tokens", "tool_use": "tool_use",
                   "refusal": "refusal", "content_filter": "refusal"}


def _tokens(value: int | None) -> int:
    return value or 0


class _AfterPrefill:
    """Strips the prefill off the front of a normalized stream (it always starts with it)."""

    def __init__(self, prefill: str) -> None:
        self._skip = len(prefill)

    def __call__(self, chunk: str) -> str:
        if self._skip:
            cut = min(self._skip, len(chunk))
            self._skip -= cut
            chunk = chunk[cut:]
        return chunk


@dataclass
class _Run:
    """A prepared response being generated for one HTTP request."""

    chat: Chat
    model: Model
    response: Response
    exchange: Exchange
    chunks: AsyncIterator[str]
    watcher: asyncio.Task[None]
    created: int = field(default_factory=lambda: int(time.time()))

    def content(self, chunk: str, strip: _AfterPrefill) -> str:
        return chunk if self.chat.echo else strip(chunk)

    async def rest(self, first: str | None) -> str:
        """The whole normalized text (for a reply that is not streamed)."""
        try:
            parts = [first] if first else []
            parts += [chunk async for chunk in self.chunks]
            return "".join(parts)
        finally:
            self.close()

    def close(self) -> None:
        """Stop generating (a no-op once it ended). Synchronous, so that it also runs in
        the ``finally`` of a stream being cancelled."""
        self.exchange.cancel()
        self.watcher.cancel()


# -- the application ------------------------------------------------------------------------


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    in_flight: set[Exchange] = set()
    #: Set when the grace period is over: a request prepared from then on is not started.
    stopping = asyncio.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # Shutdown: the server has waited for in-flight requests as long as it was allowed;
        # cancel what is left and let each log what arrived (partial) before exiting.
        left = list(in_flight)
        if any(not exchange.cancelled for exchange in left):
            settings.say(f"cancelling {len(left)} request(s) in flight")
        for exchange in await stop_all(left, STOP_WAIT):
            settings.say(f"{exchange.response.id} did not stop when cancelled; logged as "
                         "partial")
        flush = getattr(settings.log_to, "flush", None)
        if flush is not None:  # rows still queued for the log are written before "stopped"
            await asyncio.to_thread(flush)

    # No /docs, /redoc or /openapi.json: nothing is public but /health.
    app = FastAPI(title="llmcli serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(Guard, settings=settings)

    def authorize(request: Request, anthropic: bool) -> None:
        if not settings.api_key:
            return
        # Compared as digests: constant time, whatever the lengths.
        expected = hashlib.sha256(settings.api_key.encode()).digest()
        offered = []
        authorization = request.headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            offered.append(authorization[7:].strip())
        if anthropic and "x-api-key" in request.headers:
            offered.append(request.headers["x-api-key"])
        if not any(hmac.compare_digest(hashlib.sha256(k.encode()).digest(), expected)
                   for k in offered):
            how = "'Authorization: Bearer KEY'" + (" or 'x-api-key: KEY'" if anthropic else "")
            raise WireError(401, f"Invalid or missing API key: send {how}",
                            "authentication_error", "invalid_api_key")

    def logger() -> bool | Logger:
        if not settings.log or not config.logging_enabled():
            return False
        return settings.log_to or True

    def prepare(chat: Chat) -> tuple[Model, Response]:
        """Every check that needs no network, on a worker thread (it may open the log)."""
        model = choose_model(settings, chat.model)
        fields = model.Options.model_fields
        options: dict[str, Any] = {}
        for option in chat.options:
            name = next((n for n in option.candidates if n in fields), None)
            if name is None:
                if option.optional:
                    continue
                raise WireError(400, f"Model {model.model_id!r} does not take "
                                f"{option.wire_name!r}", code="unsupported_parameter",
                                param=option.wire_name)
            options[name] = option.value
        conversation = Conversation(model, history=chat.history)
        # Always streamed from the backend, so a client that goes away stops generation at
        # once; the normalized text is the same either way.
        response = api.prompt(model, chat.prompt, system=chat.system, prefill=chat.prefill,
                              stream=True, log=logger(), conversation=conversation,
                              options=options, schema=chat.schema)
        refuse_loop(settings, model, response.request)
        return model, response

    def done(exchange: Exchange) -> None:
        in_flight.discard(exchange)
        response = exchange.response
        note = f", {response.error}" if response.error else ""
        settings.say(f"{response.model.model_id} {response.id} {response.status} "
                     f"({len(response.text_so_far())} characters{note})")
        if response.log_error:
            # The client has its reply all the same; the operator hears about the log.
            settings.say(f"warning: {response.id} was not logged: {response.log_error}")

    async def start(request: Request, chat: Chat) -> tuple[_Run, str | None]:
        """Prepare and start a response; wait for its first chunk so that a failure before
        any text is answered with a status, not inside a 200 stream."""
        model, response = await run_in_threadpool(prepare, chat)
        if stopping.is_set():  # prepared after the grace period ended: never started
            raise SHUTTING_DOWN
        exchange = Exchange(response, model_slots(model), on_done=done)
        in_flight.add(exchange)
        exchange.start()
        watcher = asyncio.create_task(_watch_disconnect(request, exchange))
        run = _Run(chat, model, response, exchange, exchange.chunks(), watcher)
        try:
            first = await anext(run.chunks, None)
        except BaseException:
            run.close()
            raise
        return run, first

    async def handle(request: Request, anthropic: bool,
                     body: Callable[[Request], Awaitable[HTTPResponse]]) -> HTTPResponse:
        try:
            authorize(request, anthropic)
            return await body(request)
        except asyncio.CancelledError:
            # The server is stopping and the grace period is over: answer, do not crash.
            error = SHUTTING_DOWN
            content = anthropic_body(error) if anthropic else openai_body(error)
            return JSONResponse(content, status_code=error.status)
        except Exception as exc:
            error = from_exception(exc)
            if error.status >= 500 and os.environ.get("LLMCLI_DEBUG", "") not in ("", "0"):
                sys.stderr.write(scrub("".join(traceback.format_exception(exc))))
            content = anthropic_body(error) if anthropic else openai_body(error)
            return JSONResponse(content, status_code=error.status)

    # -- OpenAI --------------------------------------------------------------------------

    async def openai_completion(request: Request) -> HTTPResponse:
        chat = openai_chat(parse(OpenAIRequest, await request.body()))
        run, first = await start(request, chat)
        if chat.stream:
            return _sse(_openai_events(run, first))
        text = await run.rest(first)
        response = run.response
        usage = response.usage()
        return JSONResponse({
            "id": f"chatcmpl-{response.id}",
            "object": "chat.completion",
            "created": run.created,
            "model": run.model.model_id,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant",
                            "content": text if chat.echo else text[len(chat.prefill):]},
                "logprobs": None,
                "finish_reason": _OPENAI_FINISH.get(usage.stop_reason or "", "stop"),
            }],
            "usage": _openai_usage(response),
            "prefill_support": response.prefill_support.value,
        })

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> HTTPResponse:
        return await handle(request, False, openai_completion)

    # -- Anthropic -----------------------------------------------------------------------

    async def anthropic_message(request: Request) -> HTTPResponse:
        chat = anthropic_chat(parse(AnthropicRequest, await request.body()))
        run, first = await start(request, chat)
        if chat.stream:
            return _sse(_anthropic_events(run, first))
        text = await run.rest(first)
        response = run.response
        usage = response.usage()
        return JSONResponse({
            "id": f"msg_{response.id}",
            "type": "message",
            "role": "assistant",
            "model": run.model.model_id,
            "content": [{"type": "text", "text": text[len(chat.prefill):]}],
            "stop_reason": _ANTHROPIC_STOP.get(usage.stop_reason or "", "end_turn"),
            "stop_sequence": None,
            "usage": _anthropic_usage(usage),
            "prefill_support": response.prefill_support.value,
        })

    @app.post("/v1/messages")
    async def messages(request: Request) -> HTTPResponse:
        return await handle(request, True, anthropic_message)

    # -- models and health ---------------------------------------------------------------

    async def list_models(request: Request) -> HTTPResponse:
        models = await run_in_threadpool(served_models, settings)
        described = [_describe(model) for model in models]
        if "anthropic-version" in request.headers:  # the anthropic SDK's models.list()
            data = [{"type": "model", "id": d["id"], "display_name": d["id"],
                     "created_at": "1970-01-01T00:00:00Z", "aliases": d["aliases"],
                     "prefill_support": d["prefill_support"]} for d in described]
            return JSONResponse({"data": data, "has_more": False,
                                 "first_id": data[0]["id"] if data else None,
                                 "last_id": data[-1]["id"] if data else None})
        return JSONResponse({"object": "list", "data": described})

    @app.get("/v1/models")
    async def models(request: Request) -> HTTPResponse:
        return await handle(request, "anthropic-version" in request.headers, list_models)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    async def not_found(request: Request, exc: Exception) -> HTTPResponse:
        status = getattr(exc, "status_code", 404)
        error = WireError(status, f"{request.method} {request.url.path}: "
                          f"{'no such endpoint' if status == 404 else 'method not allowed'}")
        if request.url.path.startswith("/v1/messages"):
            return JSONResponse(anthropic_body(error), status_code=status)
        return JSONResponse(openai_body(error), status_code=status)

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_found)

    def cut_short() -> None:
        """The grace period is over (:func:`llmcli.serve.server.serve` calls this): every
        request in flight ends now with SHUTTING_DOWN, a 503 or an error event closing its
        stream, so each response completes; their threads are cancelled and log what
        arrived as partial."""
        stopping.set()
        left = [exchange for exchange in list(in_flight) if not exchange.cancelled]
        if left:
            settings.say(f"cancelling {len(left)} request(s) in flight")
        for exchange in left:
            exchange.cancel(SHUTTING_DOWN)

    app.state.cut_short = cut_short
    return app


def _describe(model: Model) -> dict[str, Any]:
    try:
        support = model.get_prefill_support(model.Options())
    except Exception:  # options that cannot be built from defaults: the declared capability
        support = model.prefill_support
    return {"id": model.model_id, "object": "model", "created": 0,
            "owned_by": model.plugin or "llmcli", "aliases": list(model.aliases),
            "prefill_support": PrefillSupport(support).value}


async def _watch_disconnect(request: Request, exchange: Exchange) -> None:
    """Cancel the generation when the client goes away (the body has been read by now, so
    the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            exchange.cancel()
            return


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


def _openai_usage(response: Response) -> dict[str, Any]:
    usage = response.usage()
    prompt, completion = _tokens(usage.input_tokens), _tokens(usage.output_tokens)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if cached := _cached(usage):  # of prompt_tokens, as OpenAI reports them
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def _cached(usage: Usage) -> int:
    """The prompt tokens a backend took from a cache (``details["cached_tokens"]``), or 0
    where it reported none."""
    cached = usage.details.get("cached_tokens")
    return cached if isinstance(cached, int) and cached > 0 else 0


def _anthropic_usage(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage: ``input_tokens`` are those not read from a cache, and
    ``cache_read_input_tokens`` those that were (a local model's kept prompt positions), so
    that their sum is the whole prompt, as Anthropic reports its own prompt caching."""
    prompt = _tokens(usage.input_tokens)
    cached = _cached(usage)
    if not cached or cached > prompt:
        return {"input_tokens": prompt, "output_tokens": _tokens(usage.output_tokens)}
    return {"input_tokens": prompt - cached, "output_tokens": _tokens(usage.output_tokens),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def _data(payload: Any) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def _openai_events(run: _Run, first: str | None) -> AsyncIterator[str]:
    chat, response = run.chat, run.response
    base = {"id": f"chatcmpl-{response.id}", "object": "chat.completion.chunk",
            "created": run.created, "model": run.model.model_id}

    def frame(delta: dict[str, Any] | None, finish: str | None = None,
              usage: dict[str, int] | None = None) -> str:
        choices = [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        payload: dict[str, Any] = {**base, "choices": choices}
        if chat.include_usage:
            payload["usage"] = usage
        return _data(payload)

    strip = _AfterPrefill(chat.prefill)
    try:
        yield frame({"role": "assistant", "content": ""})
        if first is not None:
            piece = run.content(first, strip)
            if piece:
                yield frame({"content": piece})
        async for chunk in run.chunks:
            piece = run.content(chunk, strip)
            if piece:
                yield frame({"content": piece})
    except (Exception, asyncio.CancelledError) as exc:
        error = SHUTTING_DOWN if isinstance(exc, asyncio.CancelledError) else from_exception(exc)
        yield _data(openai_body(error))
        yield "data: [DONE]\n\n"
        return
    finally:
        run.close()
    stop = response.usage().stop_reason or ""
    yield frame({}, _OPENAI_FINISH.get(stop, "stop"))
    if chat.include_usage:
        yield frame(None, usage=_openai_usage(response))
    yield "data: [DONE]\n\n"


def shutting_down_body(path: str, stream: bool) -> bytes:
    """What ends a request that is still running when the server stops, in its wire's shape:
    a 503's body, or a stream's closing error event."""
    anthropic = path.startswith("/v1/messages")
    if not stream:
        return json.dumps(anthropic_body(SHUTTING_DOWN) if anthropic
                          else openai_body(SHUTTING_DOWN)).encode()
    if anthropic:
        return _event("error", {"error": anthropic_body(SHUTTING_DOWN)["error"]}).encode()
    return (_data(openai_body(SHUTTING_DOWN)) + "data: [DONE]\n\n").encode()


def _event(name: str, payload: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n"


async def _anthropic_events(run: _Run, first: str | None) -> AsyncIterator[str]:
    response = run.response
    strip = _AfterPrefill(run.chat.prefill)
    try:
        yield _event("message_start", {"message": {
            "id": f"msg_{response.id}", "type": "message", "role": "assistant",
            "model": run.model.model_id, "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}})
        yield _event("content_block_start",
                     {"index": 0, "content_block": {"type": "text", "text": ""}})
        yield _event("ping", {})

        def delta(text: str) -> str:
            return _event("content_block_delta",
                          {"index": 0, "delta": {"type": "text_delta", "text": text}})

        if first is not None and (piece := strip(first)):
            yield delta(piece)
        async for chunk in run.chunks:
            if piece := strip(chunk):
                yield delta(piece)
    except (Exception, asyncio.CancelledError) as exc:
        error = SHUTTING_DOWN if isinstance(exc, asyncio.CancelledError) else from_exception(exc)
        yield _event("error", {"error": anthropic_body(error)["error"]})
        return
    finally:
        run.close()
    usage = response.usage()
    yield _event("content_block_stop", {"index": 0})
    yield _event("message_delta", {
        "delta": {"stop_reason": _ANTHROPIC_STOP.get(usage.stop_reason or "", "end_turn"),
                  "stop_sequence": None},
        "usage": _anthropic_usage(usage)})
    yield _event("message_stop", {})

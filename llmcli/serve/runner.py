"""What every wire shares: authentication, preparing an asynchronous response through
:func:`llmcli.api.prompt_async` (every check that needs no network, so a refused prefill is a
400 before any upstream call), running it in a task on the event loop
(:mod:`llmcli.serve.exchange`), the requests in flight, cutting them short when the server
stops, and turning a failure into the wire's error shape.

The wire modules (:mod:`llmcli.serve.openai_wire`, :mod:`llmcli.serve.anthropic_wire`) parse
their request into a :class:`Chat`, call :meth:`Runner.start` and render the normalized text.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.responses import Response as HTTPResponse

from llmcli import api, config
from llmcli.config import scrub
from llmcli.contract import Model
from llmcli.request import Reasoning, Usage
from llmcli.response import AsyncResponse, Conversation
from llmcli.serve.errors import WireError, anthropic_body, from_exception, openai_body
from llmcli.serve.exchange import STOP_WAIT, Exchange, model_slots, stop_all
from llmcli.serve.guard import choose_model, refuse_loop
from llmcli.serve.protocol import Chat
from llmcli.spec import Logger, PromptSpec

if TYPE_CHECKING:
    from llmcli.serve.app import ServeSettings

__all__ = ["SHUTTING_DOWN", "AfterPrefill", "Run", "Runner", "Wire", "cached_tokens", "sse",
           "stream_failure", "tokens"]

#: What a request still running when the server stops (after its grace period) gets.
SHUTTING_DOWN = WireError(503, "llmcli serve is stopping; the reply was cut short",
                          "server_error", "shutting_down")


def tokens(value: int | None) -> int:
    return value or 0


def cached_tokens(usage: Usage) -> int:
    """The prompt tokens a backend took from a cache (``details["cached_tokens"]``), or 0
    where it reported none."""
    cached = usage.details.get("cached_tokens")
    return cached if isinstance(cached, int) and cached > 0 else 0


def stream_failure(exc: BaseException) -> WireError:
    """What ends a stream that failed after its 200: the server stopping (the task was
    cancelled) or the failure itself, for the wire's error event."""
    return SHUTTING_DOWN if isinstance(exc, asyncio.CancelledError) else from_exception(exc)


def sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


class AfterPrefill:
    """Strips the prefill off the front of a normalized stream (it always starts with it)."""

    def __init__(self, prefill: str) -> None:
        self._skip = len(prefill)

    def __call__(self, chunk: str) -> str:
        if self._skip:
            cut = min(self._skip, len(chunk))
            self._skip -= cut
            chunk = chunk[cut:]
        return chunk


@dataclass(frozen=True)
class Wire:
    """What one wire module gives the runner: its body parser, its whole reply and its
    stream of events, and whether its errors take Anthropic's shape."""

    path: str
    name: str
    anthropic: bool
    chat: Callable[[bytes], Chat]
    whole: Callable[[Run, str], dict[str, Any]]
    events: Callable[[Run, str | Reasoning | None], AsyncIterator[str]]


@dataclass
class Run:
    """A prepared response being generated for one HTTP request."""

    chat: Chat
    model: Model
    response: AsyncResponse
    exchange: Exchange
    chunks: AsyncIterator[str | Reasoning]
    watcher: asyncio.Task[None]
    created: int = field(default_factory=lambda: int(time.time()))

    def content(self, chunk: str, strip: AfterPrefill) -> str:
        return chunk if self.chat.echo else strip(chunk)

    async def rest(self, first: str | Reasoning | None) -> str:
        """The whole normalized text (for a reply that is not streamed; its reasoning is
        the response's)."""
        try:
            parts = [first] if first else []
            parts += [chunk async for chunk in self.chunks]
            return "".join(p for p in parts if isinstance(p, str))
        finally:
            self.close()

    def close(self) -> None:
        """Stop generating (a no-op once it ended). Synchronous, so that it also runs in
        the ``finally`` of a stream being cancelled."""
        self.exchange.cancel()
        self.watcher.cancel()


class Runner:
    """One per application: the settings, the exchanges in flight, and whether the server
    is stopping."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.in_flight: set[Exchange] = set()
        #: Set when the grace period is over: a request prepared from then on is not started.
        self.stopping = asyncio.Event()

    def authorize(self, request: Request, anthropic: bool) -> None:
        settings = self.settings
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

    def logger(self) -> bool | Logger:
        if not self.settings.log or not config.logging_enabled():
            return False
        return self.settings.log_to or True

    def prepare(self, chat: Chat) -> tuple[Model, AsyncResponse]:
        """Every check that needs no network, on a worker thread (it may open the log)."""
        model = choose_model(self.settings, chat.model)
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
        response = api.prompt_async(model, PromptSpec(
            chat.prompt, system=chat.system, prefill=chat.prefill, stream=True,
            log=self.logger(), conversation=conversation, options=options,
            schema=chat.schema, attachments=chat.attachments, tools=chat.tools,
            tool_choice=chat.tool_choice, tool_results=chat.tool_results))
        refuse_loop(self.settings, model, response.request)
        return model, response

    def done(self, exchange: Exchange) -> None:
        self.in_flight.discard(exchange)
        response = exchange.response
        note = f", {response.error}" if response.error else ""
        self.settings.say(f"{response.model.model_id} {response.id} {response.status} "
                          f"({len(response.text_so_far())} characters{note})")
        if response.log_error:
            # The client has its reply all the same; the operator hears about the log.
            self.settings.say(f"warning: {response.id} was not logged: {response.log_error}")

    async def start(self, request: Request, chat: Chat
                    ) -> tuple[Run, str | Reasoning | None]:
        """Prepare and start a response; wait for its first chunk so that a failure before
        any text is answered with a status, not inside a 200 stream."""
        model, response = await run_in_threadpool(self.prepare, chat)
        if self.stopping.is_set():  # prepared after the grace period ended: never started
            raise SHUTTING_DOWN
        exchange = Exchange(response, model_slots(model), on_done=self.done)
        self.in_flight.add(exchange)
        exchange.start()
        watcher = asyncio.create_task(_watch_disconnect(request, exchange))
        run = Run(chat, model, response, exchange, exchange.chunks(), watcher)
        try:
            first = await anext(run.chunks, None)
        except BaseException:
            run.close()
            raise
        return run, first

    def router(self, wire: Wire) -> APIRouter:
        """A wire's ``APIRouter``: ``POST wire.path``, authenticated, its body parsed into a
        :class:`Chat` and started, then the wire's stream of events or its whole reply as
        JSON; any failure in the wire's error shape."""

        async def body(request: Request) -> HTTPResponse:
            chat = wire.chat(await request.body())
            run, first = await self.start(request, chat)
            if chat.stream:
                return sse(wire.events(run, first))
            return JSONResponse(wire.whole(run, await run.rest(first)))

        async def endpoint(request: Request) -> HTTPResponse:
            return await self.handle(request, wire.anthropic, body)

        routes = APIRouter()
        routes.add_api_route(wire.path, endpoint, methods=["POST"], name=wire.name)
        return routes

    async def handle(self, request: Request, anthropic: bool,
                     body: Callable[[Request], Awaitable[HTTPResponse]]) -> HTTPResponse:
        """Authenticate, then answer; any failure becomes the wire's error shape."""
        try:
            self.authorize(request, anthropic)
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

    def cut_short(self) -> None:
        """The grace period is over (:func:`llmcli.serve.server.serve` calls this): every
        request in flight ends now with SHUTTING_DOWN, a 503 or an error event closing its
        stream, so each response completes; their responses are cancelled and log what
        arrived as partial."""
        self.stopping.set()
        left = [exchange for exchange in list(self.in_flight) if not exchange.cancelled]
        if left:
            self.settings.say(f"cancelling {len(left)} request(s) in flight")
        for exchange in left:
            exchange.cancel(SHUTTING_DOWN)

    async def shutdown(self) -> None:
        """The server has waited for in-flight requests as long as it was allowed; cancel
        what is left and let each log what arrived (partial) before exiting."""
        settings = self.settings
        left = list(self.in_flight)
        if any(not exchange.cancelled for exchange in left):
            settings.say(f"cancelling {len(left)} request(s) in flight")
        for exchange in await stop_all(left, STOP_WAIT):
            settings.say(f"{exchange.response.id} did not stop when cancelled; logged as "
                         "partial")
        flush = getattr(settings.log_to, "flush", None)
        if flush is not None:  # rows still queued for the log are written before "stopped"
            await asyncio.to_thread(flush)


async def _watch_disconnect(request: Request, exchange: Exchange) -> None:
    """Cancel the generation when the client goes away (the body has been read by now, so
    the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            exchange.cancel()
            return

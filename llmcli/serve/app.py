"""The ASGI application: OpenAI's and Anthropic's HTTP APIs over every llmcli model.

Each wire is one module with its routes (:mod:`llmcli.serve.openai_wire`,
:mod:`llmcli.serve.anthropic_wire`): parse the wire's request into a :class:`Chat`
(:mod:`llmcli.serve.protocol`), start it through the shared :class:`Runner`
(:mod:`llmcli.serve.runner`: authenticate, prepare through :func:`llmcli.api.prompt_async`,
run in a task on the event loop) and render the normalized text in the wire's format. The
reply's text is the continuation, computed from the normalized text, so every capability
(eats, echoes, emulated) gives the same content. This module assembles them: the settings, the
guard middleware, the lifespan, ``/v1/models``, ``/health`` and the errors for unknown paths.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.responses import Response as HTTPResponse

from llmcli.capabilities import PrefillSupport
from llmcli.contract import Model
from llmcli.serve import anthropic_wire, openai_wire
from llmcli.serve.errors import WireError, anthropic_body, openai_body
from llmcli.serve.guard import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_READ_TIMEOUT,
    Guard,
    served_models,
)
from llmcli.serve.runner import SHUTTING_DOWN, Runner
from llmcli.spec import Logger

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


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    runner = Runner(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await runner.shutdown()

    # No /docs, /redoc or /openapi.json: nothing is public but /health.
    app = FastAPI(title="llmcli serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(Guard, settings=settings)
    app.include_router(runner.router(openai_wire.WIRE))
    app.include_router(runner.router(anthropic_wire.WIRE))

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
        return await runner.handle(request, "anthropic-version" in request.headers,
                                   list_models)

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

    app.state.cut_short = runner.cut_short
    return app


def _describe(model: Model) -> dict[str, Any]:
    try:
        support = model.get_prefill_support(model.Options())
    except Exception:  # options that cannot be built from defaults: the declared capability
        support = model.prefill_support
    return {"id": model.model_id, "object": "model", "created": 0,
            "owned_by": model.plugin or "llmcli", "aliases": list(model.aliases),
            "prefill_support": PrefillSupport(support).value}


def shutting_down_body(path: str, stream: bool) -> bytes:
    """What ends a request that is still running when the server stops, in its wire's shape:
    a 503's body, or a stream's closing error event."""
    anthropic = path.startswith("/v1/messages")
    if not stream:
        return json.dumps(anthropic_body(SHUTTING_DOWN) if anthropic
                          else openai_body(SHUTTING_DOWN)).encode()
    if anthropic:
        return anthropic_wire.event("error",
                                    {"error": anthropic_body(SHUTTING_DOWN)["error"]}).encode()
    return (openai_wire.data(openai_body(SHUTTING_DOWN)) + "data: [DONE]\n\n").encode()

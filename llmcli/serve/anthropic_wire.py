"""The Anthropic wire: ``POST /v1/messages``, a message or a stream of Messages API events,
Anthropic's usage (cache reads apart)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from fastapi.responses import Response as HTTPResponse

from llmcli.request import Usage
from llmcli.serve.errors import anthropic_body, from_exception
from llmcli.serve.protocol import AnthropicRequest, anthropic_chat, parse
from llmcli.serve.runner import (
    SHUTTING_DOWN,
    AfterPrefill,
    Run,
    Runner,
    cached_tokens,
    sse,
    tokens,
)

__all__ = ["event", "router"]

STOP = {"end_turn": "end_turn", "stop": "end_turn", "stop_sequence": "stop_sequence",
        "max_tokens": "max_tokens", "length": "max_tokens", "tool_use": "tool_use",
        "refusal": "refusal", "content_filter": "refusal"}


def router(runner: Runner) -> APIRouter:
    routes = APIRouter()

    async def message(request: Request) -> HTTPResponse:
        chat = anthropic_chat(parse(AnthropicRequest, await request.body()))
        run, first = await runner.start(request, chat)
        if chat.stream:
            return sse(_events(run, first))
        text = await run.rest(first)
        response = run.response
        usage = response.usage()
        return JSONResponse({
            "id": f"msg_{response.id}",
            "type": "message",
            "role": "assistant",
            "model": run.model.model_id,
            "content": [{"type": "text", "text": text[len(chat.prefill):]}],
            "stop_reason": STOP.get(usage.stop_reason or "", "end_turn"),
            "stop_sequence": None,
            "usage": _usage(usage),
            "prefill_support": response.prefill_support.value,
        })

    @routes.post("/v1/messages")
    async def messages(request: Request) -> HTTPResponse:
        return await runner.handle(request, True, message)

    return routes


def _usage(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage: ``input_tokens`` are those not read from a cache, and
    ``cache_read_input_tokens`` those that were (a local model's kept prompt positions), so
    that their sum is the whole prompt, as Anthropic reports its own prompt caching."""
    prompt = tokens(usage.input_tokens)
    cached = cached_tokens(usage)
    if not cached or cached > prompt:
        return {"input_tokens": prompt, "output_tokens": tokens(usage.output_tokens)}
    return {"input_tokens": prompt - cached, "output_tokens": tokens(usage.output_tokens),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def event(name: str, payload: dict[str, Any]) -> str:
    """One server-sent event as Anthropic streams them."""
    return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n"


async def _events(run: Run, first: str | None) -> AsyncIterator[str]:
    response = run.response
    strip = AfterPrefill(run.chat.prefill)
    try:
        yield event("message_start", {"message": {
            "id": f"msg_{response.id}", "type": "message", "role": "assistant",
            "model": run.model.model_id, "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}})
        yield event("content_block_start",
                    {"index": 0, "content_block": {"type": "text", "text": ""}})
        yield event("ping", {})

        def delta(text: str) -> str:
            return event("content_block_delta",
                         {"index": 0, "delta": {"type": "text_delta", "text": text}})

        if first is not None and (piece := strip(first)):
            yield delta(piece)
        async for chunk in run.chunks:
            if piece := strip(chunk):
                yield delta(piece)
    except (Exception, asyncio.CancelledError) as exc:
        error = SHUTTING_DOWN if isinstance(exc, asyncio.CancelledError) else from_exception(exc)
        yield event("error", {"error": anthropic_body(error)["error"]})
        return
    finally:
        run.close()
    usage = response.usage()
    yield event("content_block_stop", {"index": 0})
    yield event("message_delta", {
        "delta": {"stop_reason": STOP.get(usage.stop_reason or "", "end_turn"),
                  "stop_sequence": None},
        "usage": _usage(usage)})
    yield event("message_stop", {})

"""The Anthropic wire: ``POST /v1/messages``, a message or a stream of Messages API events,
Anthropic's usage (cache reads apart)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from llmcli.request import Usage
from llmcli.serve.errors import anthropic_body
from llmcli.serve.protocol import AnthropicRequest, Chat, anthropic_chat, parse
from llmcli.serve.runner import AfterPrefill, Run, Wire, cached_tokens, stream_failure, tokens

__all__ = ["WIRE", "event"]

STOP = {"end_turn": "end_turn", "stop": "end_turn", "stop_sequence": "stop_sequence",
        "max_tokens": "max_tokens", "length": "max_tokens", "tool_use": "tool_use",
        "refusal": "refusal", "content_filter": "refusal"}


def _message(run: Run, text: str) -> dict[str, Any]:
    """The whole reply as one Messages API message."""
    response = run.response
    usage = response.usage()
    return {
        "id": f"msg_{response.id}",
        "type": "message",
        "role": "assistant",
        "model": run.model.model_id,
        "content": [{"type": "text", "text": text[len(run.chat.prefill):]}],
        "stop_reason": STOP.get(usage.stop_reason or "", "end_turn"),
        "stop_sequence": None,
        "usage": _usage(usage),
        "prefill_support": response.prefill_support.value,
    }


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
        yield event("error", {"error": anthropic_body(stream_failure(exc))["error"]})
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


def _chat(body: bytes) -> Chat:
    return anthropic_chat(parse(AnthropicRequest, body))


#: What the runner serves at ``POST /v1/messages`` (:meth:`.runner.Runner.router`).
WIRE = Wire("/v1/messages", "messages", anthropic=True, chat=_chat, whole=_message,
            events=_events)

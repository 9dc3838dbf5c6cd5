"""The Anthropic wire: ``POST /v1/messages``, a message or a stream of Messages API events,
Anthropic's usage (cache reads apart)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from llmcli.request import Reasoning, Usage
from llmcli.response import BaseResponse
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
    usage = response.usage_so_far()
    return {
        "id": f"msg_{response.id}",
        "type": "message",
        "role": "assistant",
        "model": run.model.model_id,
        "content": [*_thinking(response.reasoning_so_far()),
                    *_content(response, text[len(run.chat.prefill):])],
        "stop_reason": _stop(response),
        "stop_sequence": None,
        "usage": _usage(usage),
        "prefill_support": response.prefill_support.value,
    }


def _tool_uses(response: BaseResponse) -> list[dict[str, Any]]:
    """The reply's tool calls as ``tool_use`` blocks."""
    return [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
            for call in response.tool_calls_so_far()]


def _content(response: BaseResponse, text: str) -> list[dict[str, Any]]:
    """A text block (left out when the reply is only tool calls), then the tool_use blocks."""
    uses = _tool_uses(response)
    return ([{"type": "text", "text": text}] if text or not uses else []) + uses


def _stop(response: BaseResponse) -> str:
    if response.tool_calls_so_far():
        return "tool_use"
    return STOP.get(response.usage_so_far().stop_reason or "", "end_turn")


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


def _thinking(reasoning: str | None) -> list[dict[str, Any]]:
    """The reasoning as a thinking block. Its signature is empty: llmcli cannot sign one as
    Anthropic does, so a client sending it back gets it ignored, never verified."""
    if reasoning is None:
        return []
    return [{"type": "thinking", "thinking": reasoning, "signature": ""}]


def event(name: str, payload: dict[str, Any]) -> str:
    """One server-sent event as Anthropic streams them."""
    return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n"


async def _events(run: Run, first: str | Reasoning | None) -> AsyncIterator[str]:
    """The Messages API's events. With tools offered the text block opens at its first text
    (a reply that is only a call starts with its ``tool_use`` block); each call follows the
    text as ``content_block_start`` (input ``{}``), one ``input_json_delta`` with the
    arguments' JSON, and ``content_block_stop``."""
    response = run.response
    strip = AfterPrefill(run.chat.prefill)
    blocks = _Blocks()
    try:
        yield event("message_start", {"message": {
            "id": f"msg_{response.id}", "type": "message", "role": "assistant",
            "model": run.model.model_id, "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}})
        # The first block opens at once (a thinking block when the reply starts with its
        # reasoning), then the ping, as Anthropic's stream has them; with tools offered, a
        # text block waits for its text.
        if isinstance(first, Reasoning) or not run.chat.tools:
            for line in blocks.open("thinking" if isinstance(first, Reasoning) else "text"):
                yield line
        yield event("ping", {})
        if first is not None:
            for line in blocks.add(first, strip):
                yield line
        async for chunk in run.chunks:
            for line in blocks.add(chunk, strip):
                yield line
    except (Exception, asyncio.CancelledError) as exc:
        yield event("error", {"error": anthropic_body(stream_failure(exc))["error"]})
        return
    finally:
        run.close()
    uses = _tool_uses(response)
    if blocks.kind != "text" and not uses:
        # a reply that ended in its reasoning (or said nothing) still has a text block
        for line in blocks.open("text"):
            yield line
    if blocks.index >= 0:
        yield event("content_block_stop", {"index": blocks.index})
    for index, use in enumerate(uses, start=blocks.index + 1):
        yield event("content_block_start", {"index": index, "content_block": {
            "type": "tool_use", "id": use["id"], "name": use["name"], "input": {}}})
        yield event("content_block_delta", {"index": index, "delta": {
            "type": "input_json_delta", "partial_json": json.dumps(use["input"])}})
        yield event("content_block_stop", {"index": index})
    yield event("message_delta", {
        "delta": {"stop_reason": _stop(response), "stop_sequence": None},
        "usage": _usage(response.usage_so_far())})
    yield event("message_stop", {})


class _Blocks:
    """The stream's content blocks: a thinking block for the reasoning, a text block for the
    answer, a new one each time the kind changes (indexed from 0, as Anthropic's)."""

    def __init__(self) -> None:
        self.index = -1
        self.kind = ""

    def open(self, kind: str) -> list[str]:
        lines = []
        if self.index >= 0:
            lines.append(event("content_block_stop", {"index": self.index}))
        self.index += 1
        self.kind = kind
        block = ({"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking"
                 else {"type": "text", "text": ""})
        lines.append(event("content_block_start", {"index": self.index,
                                                   "content_block": block}))
        return lines

    def add(self, chunk: str | Reasoning, strip: AfterPrefill) -> list[str]:
        if isinstance(chunk, Reasoning):
            lines = self.open("thinking") if self.kind != "thinking" else []
            delta = {"type": "thinking_delta", "thinking": chunk.text}
        else:
            piece = strip(chunk)
            if not piece:
                return []
            lines = self.open("text") if self.kind != "text" else []
            delta = {"type": "text_delta", "text": piece}
        lines.append(event("content_block_delta", {"index": self.index, "delta": delta}))
        return lines


def _chat(body: bytes) -> Chat:
    return anthropic_chat(parse(AnthropicRequest, body))


#: What the runner serves at ``POST /v1/messages`` (:meth:`.runner.Runner.router`).
WIRE = Wire("/v1/messages", "messages", anthropic=True, chat=_chat, whole=_message,
            events=_events)

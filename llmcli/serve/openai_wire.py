"""The OpenAI wire: ``POST /v1/chat/completions``, a reply or a stream of
``chat.completion.chunk`` events, OpenAI's usage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from llmcli.request import Reasoning
from llmcli.response import BaseResponse
from llmcli.serve.errors import openai_body
from llmcli.serve.protocol import Chat, OpenAIRequest, openai_chat, parse
from llmcli.serve.runner import AfterPrefill, Run, Wire, cached_tokens, stream_failure, tokens

__all__ = ["WIRE", "data"]

FINISH = {"end_turn": "stop", "stop": "stop", "stop_sequence": "stop",
          "max_tokens": "length", "length": "length", "tool_use": "tool_calls",
          "content_filter": "content_filter"}


def _completion(run: Run, text: str) -> dict[str, Any]:
    """The whole reply as one chat completion."""
    chat, response = run.chat, run.response
    usage = response.usage_so_far()
    message = _message(response, text if chat.echo else text[len(chat.prefill):])
    if (reasoning := response.reasoning_so_far()) is not None:
        message["reasoning_content"] = reasoning  # vLLM's and DeepSeek's field
    return {
        "id": f"chatcmpl-{response.id}",
        "object": "chat.completion",
        "created": run.created,
        "model": run.model.model_id,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": FINISH.get(usage.stop_reason or "", "stop"),
        }],
        "usage": _usage(response),
        "prefill_support": response.prefill_support.value,
    }


def _tool_calls(response: BaseResponse) -> list[dict[str, Any]]:
    """The reply's tool calls as OpenAI writes them (arguments as JSON text)."""
    return [call.as_function() for call in response.tool_calls_so_far()]


def _message(response: BaseResponse, content: str) -> dict[str, Any]:
    calls = _tool_calls(response)
    if not calls:
        return {"role": "assistant", "content": content}
    return {"role": "assistant", "content": content or None, "tool_calls": calls}


def _usage(response: BaseResponse) -> dict[str, Any]:
    usage = response.usage_so_far()
    prompt, completion = tokens(usage.input_tokens), tokens(usage.output_tokens)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if cached := cached_tokens(usage):  # of prompt_tokens, as OpenAI reports them
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def data(payload: Any) -> str:
    """One server-sent event as OpenAI streams them."""
    return f"data: {json.dumps(payload)}\n\n"


async def _events(run: Run, first: str | Reasoning | None) -> AsyncIterator[str]:
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
        return data(payload)

    strip = AfterPrefill(chat.prefill)

    def delta(chunk: str | Reasoning) -> dict[str, Any] | None:
        if isinstance(chunk, Reasoning):  # streamed as vLLM streams it
            return {"reasoning_content": chunk.text}
        piece = run.content(chunk, strip)
        return {"content": piece} if piece else None

    try:
        yield frame({"role": "assistant", "content": ""})
        if first is not None and (piece := delta(first)):
            yield frame(piece)
        async for chunk in run.chunks:
            if piece := delta(chunk):
                yield frame(piece)
    except (Exception, asyncio.CancelledError) as exc:
        yield data(openai_body(stream_failure(exc)))
        yield "data: [DONE]\n\n"
        return
    finally:
        run.close()
    for index, call in enumerate(_tool_calls(response)):
        yield frame({"tool_calls": [{"index": index, **call}]})
    stop = response.usage_so_far().stop_reason or ""
    yield frame({}, FINISH.get(stop, "stop"))
    if chat.include_usage:
        yield frame(None, usage=_usage(response))
    yield "data: [DONE]\n\n"


def _chat(body: bytes) -> Chat:
    return openai_chat(parse(OpenAIRequest, body))


#: What the runner serves at ``POST /v1/chat/completions`` (:meth:`.runner.Runner.router`).
WIRE = Wire("/v1/chat/completions", "chat_completions", anthropic=False, chat=_chat,
            whole=_completion, events=_events)

"""A fake Anthropic Messages API (``POST /v1/messages``) that behaves like the real one where
prefill is concerned:

* a trailing assistant message is continued and *not* repeated (the prefill is eaten);
* a final assistant message ending in whitespace is a 400;
* Claude 4.6 and later reject any trailing assistant message with a 400;
* with extended thinking on, a trailing text assistant message is a 400;
* streaming speaks the documented SSE events (message_start, content_block_start, ping,
  content_block_delta/text_delta, content_block_stop, message_delta, message_stop, error).

Tools: a request with ``tools`` takes the next of ``fake.tool_uses`` (a list of
``{"id", "name", "input"}`` per reply): the reply's text, then those ``tool_use`` blocks
(streamed as ``content_block_start`` with an empty input and ``input_json_delta`` pieces),
stop reason ``tool_use``. As the API does, a ``tool_use`` not answered by a ``tool_result``
in the next user message is a 400, and so is a request whose messages hold ``tool_use`` or
``tool_result`` blocks without ``tools``.

The model's text is scripted per test with ``fake.reply``; queued replies (``fake.queued``,
see :func:`error`) are served first, one per request.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tests.fakes.base import RecordedRequest, Reply, ScriptedServer, split_text, sse
from tests.fakes.shapes import anthropic_problem

#: The fake's own notion of which models reject prefill (deliberately not the plugin's code).
_REJECTS_PREFILL = re.compile(r"^claude-(opus|sonnet|haiku)-(4-([6-9]|\d\d)|[5-9])")

TOOLS_UNDECLARED = ("Requests which include `tool_use` or `tool_result` blocks must define "
                    "tools.")
TRAILING_WHITESPACE = "messages: final assistant content cannot end with trailing whitespace"
NO_PREFILL = (
    "This model does not support assistant message prefill. "
    "The conversation must end with a user message."
)
THINKING_PREFILL = (
    "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `text`. "
    "When `thinking` is enabled, a final `assistant` message must start with a thinking block."
)


def error(status: int, error_type: str, message: str, headers: dict[str, str] | None = None
          ) -> Reply:
    """An Anthropic error response: ``{"type": "error", "error": {"type", "message"}}``."""
    body = {"type": "error", "error": {"type": error_type, "message": message},
            "request_id": "req_fake"}
    return Reply(status=status, json_body=body, headers={"request-id": "req_fake",
                                                         **(headers or {})})


def error_event(error_type: str, message: str) -> str:
    return sse({"type": "error", "error": {"type": error_type, "message": message}}, "error")


class FakeAnthropic(ScriptedServer):
    def __init__(self, api_key: str = "sk-ant-test-key") -> None:
        super().__init__()
        self.api_key = api_key
        #: What the model writes (after the prefill, when the API eats it).
        self.reply = "Hello from Claude."
        self.thinking_text = "Let me think."
        #: Characters per text_delta when streaming.
        self.chunk_size = 3
        #: Streaming: close the connection after this many SSE events.
        self.cut_after: int | None = None
        #: Streaming: send an ``error`` event after this many text deltas.
        self.error_after_deltas: int | None = None
        #: Streaming: end the stream cleanly without ``message_stop`` (a proxy cut it short).
        self.unfinished = False
        self.delay = 0.0
        #: Prompt tokens reported as read from the prompt cache (``cache_read_input_tokens``,
        #: not counted in ``input_tokens``); 0 sends no cache fields.
        self.cache_read = 0
        #: Per reply to a request with tools: the tool_use blocks it ends with.
        self.tool_uses: list[list[dict[str, Any]]] = []

    @property
    def last_body(self) -> dict[str, Any]:
        return self.requests[-1].body

    def respond(self, request: RecordedRequest) -> Reply:
        if not request.path.startswith("/v1/messages"):
            return error(404, "not_found_error", f"Not found: {request.path}")
        # The API takes the key as x-api-key or as a bearer token (newer SDKs send the latter).
        sent_key = request.headers.get("x-api-key") or request.headers.get(
            "authorization", "").removeprefix("Bearer ")
        if sent_key != self.api_key:
            return error(401, "authentication_error", "invalid x-api-key")
        return self.answer(request.body)

    def answer(self, body: Any) -> Reply:
        """A Messages request (``model`` in the body) answered as the API would."""
        if not isinstance(body, dict) or "max_tokens" not in body or not body.get("messages"):
            return error(400, "invalid_request_error", "messages: Field required")
        model = body.get("model", "")
        messages = body["messages"]
        problem = anthropic_problem(messages)
        if problem:
            return error(400, "invalid_request_error", problem)
        last = messages[-1]
        thinking = (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")
        if last["role"] == "assistant":
            content = last["content"]
            text = content if isinstance(content, str) else "".join(
                block.get("text", "") for block in content)
            if _REJECTS_PREFILL.match(model):
                return error(400, "invalid_request_error", NO_PREFILL)
            if thinking:
                return error(400, "invalid_request_error", THINKING_PREFILL)
            if text != text.rstrip():
                return error(400, "invalid_request_error", TRAILING_WHITESPACE)
        unanswered = _unanswered_tool_use(messages)
        if unanswered:
            return error(400, "invalid_request_error", unanswered)
        if not body.get("tools") and any(
                isinstance(block, dict) and block.get("type") in ("tool_use", "tool_result")
                for m in messages if isinstance(m.get("content"), list) for block in m["content"]):
            return error(400, "invalid_request_error", TOOLS_UNDECLARED)
        text, stop_reason, stop_sequence = self._generate(body)
        calls = self.tool_uses.pop(0) if body.get("tools") and self.tool_uses else []
        if calls:
            stop_reason, stop_sequence = "tool_use", None
        usage_in = sum(len(str(m["content"]).split()) for m in messages) + 3
        usage_out = max(1, len(text.split()))
        if body.get("stream"):
            return Reply(events=self._events(model, text, thinking, stop_reason, stop_sequence,
                                             usage_in, usage_out, calls),
                         cut_after=self.cut_after, delay=self.delay,
                         headers=self.stream_headers)
        content_blocks: list[dict[str, Any]] = []
        if thinking:
            content_blocks.append({"type": "thinking", "thinking": self.thinking_text,
                                   "signature": "sig"})
        if text:
            content_blocks.append({"type": "text", "text": text})
        content_blocks += [{"type": "tool_use", **call} for call in calls]
        return Reply(json_body={
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": content_blocks, "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {"input_tokens": usage_in, "output_tokens": usage_out,
                      **self._cache_usage()},
        }, delay=self.delay)

    #: The streamed reply's headers (a platform's own content type).
    stream_headers: dict[str, str] = {}

    def frame(self, payload: dict[str, Any]) -> str | bytes:
        """One stream event as this wire frames it (SSE here)."""
        return sse(payload, payload["type"])

    def error_frame(self, error_type: str, message: str) -> str | bytes:
        return error_event(error_type, message)

    def _cache_usage(self) -> dict[str, int]:
        if not self.cache_read:
            return {}
        return {"cache_read_input_tokens": self.cache_read, "cache_creation_input_tokens": 0}

    def _generate(self, body: dict[str, Any]) -> tuple[str, str, str | None]:
        text = self.reply
        for stop in body.get("stop_sequences") or []:
            at = text.find(stop)
            if at != -1:
                # The API does not include the stop sequence in the text.
                return text[:at], "stop_sequence", stop
        return text, "end_turn", None

    def _events(self, model: str, text: str, thinking: bool, stop_reason: str,
                stop_sequence: str | None, usage_in: int, usage_out: int,
                calls: list[dict[str, Any]] | None = None) -> list[str | bytes]:
        events = [self.frame({"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": usage_in, "output_tokens": 1, **self._cache_usage()}}})]
        index = 0
        if thinking:
            events += [
                self.frame({"type": "content_block_start", "index": 0,
                     "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
                *(self.frame({"type": "content_block_delta", "index": 0,
                              "delta": {"type": "thinking_delta", "thinking": piece}})
                  for piece in split_text(self.thinking_text, self.chunk_size)),
                self.frame({"type": "content_block_delta", "index": 0,
                     "delta": {"type": "signature_delta", "signature": "sig"}}),
                self.frame({"type": "content_block_stop", "index": 0}),
            ]
            index = 1
        events += [
            self.frame({"type": "content_block_start", "index": index,
                 "content_block": {"type": "text", "text": ""}}),
            self.frame({"type": "ping"}),
        ]
        for n, piece in enumerate(split_text(text, self.chunk_size)):
            if self.error_after_deltas is not None and n == self.error_after_deltas:
                events.append(self.error_frame("overloaded_error", "Overloaded"))
                return events
            events.append(self.frame({"type": "content_block_delta", "index": index,
                               "delta": {"type": "text_delta", "text": piece}}))
        events.append(self.frame({"type": "content_block_stop", "index": index}))
        for call in calls or []:
            index += 1
            events.append(self.frame({"type": "content_block_start", "index": index,
                                      "content_block": {"type": "tool_use", "id": call["id"],
                                                        "name": call["name"], "input": {}}}))
            for piece in split_text(json.dumps(call["input"]), 7):
                events.append(self.frame({"type": "content_block_delta", "index": index,
                                          "delta": {"type": "input_json_delta",
                                                    "partial_json": piece}}))
            events.append(self.frame({"type": "content_block_stop", "index": index}))
        events += [
            self.frame({"type": "message_delta",
                 "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                 "usage": {"output_tokens": usage_out}}),
        ]
        if not self.unfinished:
            events.append(self.frame({"type": "message_stop"}))
        return events


def _unanswered_tool_use(messages: list[dict[str, Any]]) -> str | None:
    """The API's 400 for a ``tool_use`` whose id no ``tool_result`` in the next message
    answers."""
    for n, message in enumerate(messages):
        content = message.get("content")
        if message["role"] != "assistant" or not isinstance(content, list):
            continue
        ids = [b["id"] for b in content if b.get("type") == "tool_use"]
        following = messages[n + 1]["content"] if n + 1 < len(messages) else []
        answered = {b.get("tool_use_id") for b in following if isinstance(b, dict)
                    and b.get("type") == "tool_result"} if isinstance(following, list) else set()
        missing = [i for i in ids if i not in answered]
        if missing and n + 1 < len(messages):
            return (f"messages.{n + 1}: `tool_use` ids were found without `tool_result` "
                    f"blocks immediately after: {', '.join(missing)}. Each `tool_use` block "
                    "must have a corresponding `tool_result` block in the next message.")
    return None

"""A fake Mistral chat completions API (``POST /v1/chat/completions``) that behaves like the
real one where prefill is concerned:

* a final assistant message with ``"prefix": true`` is continued, and the reply *echoes* it:
  the content starts with the prefix, in streaming too (Mistral's docs strip it with
  ``content[len(prefix):]``);
* a final assistant message without ``prefix: true`` is a 400 with code 3230;
* streaming is ``data: {chunk}`` frames ending with ``data: [DONE]``.

The model's text (after the prefix) is scripted per test with ``fake.reply``; queued replies
(``fake.queued``, see :func:`error`) are served first, one per request.

Tools: a request with ``tools`` takes the next of ``tool_calls`` (a list of
``{"id", "name", "arguments"}``, arguments as JSON text) when there is one, and answers with
``message.tool_calls`` (finish_reason ``tool_calls``); streamed, each call comes whole in one
delta, as Mistral sends them. A request that carries tools or tool messages is checked against
the SDK's ``ChatCompletionRequest`` (a 422 with ``detail``, as the API's validation answers),
and as the API answers: a call id that is not 9 letters or digits is a 400 (code 3280), as is
an assistant message with neither content nor tool_calls, or a ``role: tool`` message that
answers no earlier call (the API's wording for that one is our guess).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from tests.fakes.base import RecordedRequest, Reply, ScriptedServer, split_text, sse
from tests.fakes.shapes import mistral_problem

NO_PREFIX = ("Expected last role User or Tool (or Assistant with prefix True) for serving but "
             "got assistant")


def error(status: int, message: str, *, error_type: str = "invalid_request_error",
          code: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    """A Mistral error response: ``{"object": "error", "message", "type", "param", "code"}``."""
    body = {"object": "error", "message": message, "type": error_type, "param": None,
            "code": code}
    return Reply(status=status, json_body=body, headers=headers or {})


def unauthorized() -> Reply:
    # Authentication failures come from the gateway, in a shorter shape.
    return Reply(status=401, json_body={"message": "Unauthorized", "request_id": "req_fake"})


class FakeMistral(ScriptedServer):
    def __init__(self, api_key: str = "mistral-test-key") -> None:
        super().__init__()
        self.api_key = api_key
        #: What the model writes after the prefix (the prefix itself is echoed before it).
        self.reply = "Bonjour from Mistral."
        self.chunk_size = 3
        self.cut_after: int | None = None
        #: Streaming: end with [DONE] but no chunk carrying a finish_reason.
        self.unfinished = False
        self.delay = 0.0
        #: Per reply to a request with tools: the calls it makes.
        self.tool_calls: list[list[dict[str, str]]] = []

    @property
    def last_body(self) -> dict[str, Any]:
        return self.requests[-1].body

    def respond(self, request: RecordedRequest) -> Reply:
        if not request.path.startswith("/v1/chat/completions"):
            return error(404, f"Not found: {request.path}", error_type="not_found")
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return unauthorized()
        body = request.body
        if not isinstance(body, dict) or not body.get("messages"):
            return Reply(status=422, json_body={"detail": [
                {"type": "missing", "loc": ["body", "messages"], "msg": "Field required"}]})
        model = body.get("model", "")
        messages = body["messages"]
        problem = mistral_problem(messages)
        if problem:
            return error(400, problem)
        if body.get("tools") or any(m.get("role") == "tool" or m.get("tool_calls")
                                    for m in messages):
            refusal = _tool_problem(body)
            if refusal is not None:
                return refusal
        last = messages[-1]
        echo = ""
        if last["role"] == "assistant":
            if not last.get("prefix"):
                return error(400, NO_PREFIX, error_type="invalid_request_message_order",
                             code="3230")
            echo = last["content"]
        base = {"id": "cmpl-fake", "model": model, "created": 1_764_000_000}
        if body.get("tools") and self.tool_calls:
            return self._calls(base, self.tool_calls.pop(0), bool(body.get("stream")), echo)
        text, finish = self._generate(body)
        text = echo + text
        words = sum(len(str(m.get("content") or "").split()) for m in messages)
        usage = {"prompt_tokens": words + 3,
                 "completion_tokens": max(1, len(text.split()))}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            return Reply(events=self._events(base, text, finish, usage), cut_after=self.cut_after,
                         delay=self.delay)
        return Reply(json_body={
            **base, "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": text, "tool_calls": None,
                                     "prefix": False}}],
            "usage": usage,
        }, delay=self.delay)

    def _calls(self, base: dict[str, Any], calls: list[dict[str, str]], stream: bool,
               echo: str) -> Reply:
        wire = [{"id": c["id"], "type": "function", "index": i,
                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                for i, c in enumerate(calls)]
        usage = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
        if not stream:
            return Reply(json_body={
                **base, "object": "chat.completion", "usage": usage,
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": echo, "tool_calls": wire,
                    "prefix": False}}]})
        chunk = {**base, "object": "chat.completion.chunk"}
        return Reply(events=[
            sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                             "content": echo},
                                       "finish_reason": None}]}),
            sse({**chunk, "usage": usage, "choices": [{
                "index": 0, "delta": {"tool_calls": wire}, "finish_reason": "tool_calls"}]}),
            sse("[DONE]")])

    def _generate(self, body: dict[str, Any]) -> tuple[str, str]:
        text = self.reply
        for stop in body.get("stop") or []:
            at = text.find(stop)
            if at != -1:
                return text[:at], "stop"
        limit = body.get("max_tokens")
        if limit is not None and len(text.split(" ")) > limit:  # a word a token
            return " ".join(text.split(" ")[:limit]), "length"
        return text, "stop"

    def _events(self, base: dict[str, Any], text: str, finish: str,
                usage: dict[str, int]) -> list[str]:
        def chunk(delta: dict[str, Any], finish_reason: str | None = None,
                  **extra: Any) -> str:
            return sse({**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra})

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in split_text(text, self.chunk_size)]
        if not self.unfinished:
            events.append(chunk({"content": ""}, finish, usage=usage))
        events.append(sse("[DONE]"))
        return events


_CALL_ID = re.compile(r"[A-Za-z0-9]{9}")


def _tool_problem(body: dict[str, Any]) -> Reply | None:
    """Mistral's answer to a request with tools or tool messages it refuses, or None."""
    try:
        from mistralai.client.models import ChatCompletionRequest
    except ImportError:  # mistralai 1.x (make test-oldest-sdks)
        from mistralai.models import ChatCompletionRequest  # type: ignore[no-redef]

    try:
        ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        return Reply(status=422, json_body={"detail": [
            {"type": first["type"], "loc": ["body", *first["loc"]], "msg": first["msg"]}]})
    called: set[str] = set()
    for i, message in enumerate(body["messages"]):
        ids = [c.get("id") for c in message.get("tool_calls") or []]
        if message.get("role") == "tool":
            ids.append(message.get("tool_call_id"))
        for ident in ids:
            if not isinstance(ident, str) or not _CALL_ID.fullmatch(ident):
                return error(400, f"Tool call id was {ident} but must be a-z, A-Z, 0-9, with a "
                             "length of 9.", error_type="invalid_function_call", code="3280")
        if message.get("role") == "assistant":
            if not message.get("content") and not message.get("tool_calls"):
                return error(400, "Assistant message must have either content or tool_calls, "
                             "but not none.")
            called.update(ids)
        if message.get("role") == "tool" and message["tool_call_id"] not in called:
            return error(400, f"messages[{i}]: tool message {message['tool_call_id']} answers "
                         "no tool call of an earlier assistant message")
    return None

"""A fake Mistral chat completions API (``POST /v1/chat/completions``) that behaves like the
real one where prefill is concerned:

* a final assistant message with ``"prefix": true`` is continued, and the reply *echoes* it:
  the content starts with the prefix, in streaming too (Mistral's docs strip it with
  ``content[len(prefix):]``);
* a final assistant message without ``prefix: true`` is a 400 with code 3230;
* streaming is ``data: {chunk}`` frames ending with ``data: [DONE]``.

The model's text (after the prefix) is scripted per test with ``fake.reply``; queued replies
(``fake.queued``, see :func:`error`) are served first, one per request.
"""

from __future__ import annotations

from typing import Any

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
        last = messages[-1]
        echo = ""
        if last["role"] == "assistant":
            if not last.get("prefix"):
                return error(400, NO_PREFIX, error_type="invalid_request_message_order",
                             code="3230")
            echo = last["content"]
        text, finish = self._generate(body)
        text = echo + text
        usage = {"prompt_tokens": sum(len(str(m["content"]).split()) for m in messages) + 3,
                 "completion_tokens": max(1, len(text.split()))}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": "cmpl-fake", "model": model, "created": 1_764_000_000}
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

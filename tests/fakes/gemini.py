"""A fake Gemini API (``generativelanguage.googleapis.com``, v1beta) on 127.0.0.1, shaped
after the google-genai SDK's types and Google's API reference:

* ``POST /v1/models/{model}:generateContent`` (the SDK's default version; ``/v1beta``
  too) → a ``GenerateContentResponse``
  (``candidates[].content.parts[].text``, ``finishReason``, ``usageMetadata``);
* ``POST /v1/models/{model}:streamGenerateContent?alt=sse`` → SSE ``data:`` frames, each
  a ``GenerateContentResponse`` chunk, the last with ``finishReason`` and ``usageMetadata``;
  an error inside the stream is a ``data: {"error": ...}`` frame;
* the key in ``x-goog-api-key``; errors as ``{"error": {"code", "message", "status"}}``;
* a trailing ``model`` turn is continued (the prefill is eaten) by models before 3.5 and by
  3.5 Flash; 3.5 Flash-Lite and 3.6+ answer 400 ``Requests ending with a model turn are
  not supported.`` (what Google's "latest model" page and users' reports say);
* ``generationConfig.responseJsonSchema`` needs ``responseMimeType: application/json``.

The model's text is scripted with ``fake.reply``; queued replies are served first.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tests.fakes.base import RecordedRequest, Reply, ScriptedServer, split_text
from tests.fakes.shapes import gemini_problem

MODEL_TURN = "Requests ending with a model turn are not supported."
_REJECTS_MODEL_TURN = re.compile(r"^gemini-(3\.5-flash-lite|3\.([6-9]|\d\d)|([4-9]|\d\d)[.-])")

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
           504: "DEADLINE_EXCEEDED"}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message,
                      "status": _STATUS.get(status, "INTERNAL" if status >= 500
                                            else "FAILED_PRECONDITION")}}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, json_body=error_body(status, message), headers=headers or {})


def sse_data(data: Any) -> str:
    # Google's SSE frames end in CRLF pairs.
    return f"data: {json.dumps(data)}\r\n\r\n"


class FakeGemini(ScriptedServer):
    def __init__(self, api_key: str = "AIzaFakeGeminiKey0123456789") -> None:
        super().__init__()
        self.api_key = api_key
        #: What the model writes (after the prefill, when the API eats it).
        self.reply = "Hello from Gemini."
        self.chunk_size = 2
        #: Streaming: close the connection after this many frames.
        self.cut_after: int | None = None
        #: Streaming: an error frame after this many text chunks.
        self.error_after_chunks: int | None = None
        #: Streaming: end without a finishReason (a proxy cut it short).
        self.unfinished = False
        self.finish_reason = "STOP"
        self.thoughts = 0
        self.delay = 0.0

    @property
    def last_body(self) -> dict[str, Any]:
        return self.requests[-1].body

    def respond(self, request: RecordedRequest) -> Reply:
        match = re.fullmatch(r"/v1(?:beta)?/models/([^/:]+):(generateContent|"
                             r"streamGenerateContent\?alt=sse)", request.path)
        if request.method != "POST" or match is None:
            return error(404, f"The requested URL {request.path} was not found.")
        if request.headers.get("x-goog-api-key") != self.api_key:
            return error(400, "API key not valid. Please pass a valid API key.")
        model, method = match.groups()
        body = request.body
        if not isinstance(body, dict) or not body.get("contents"):
            return error(400, "* GenerateContentRequest.contents: contents is not specified")
        contents = body["contents"]
        for content in contents:
            if content.get("role") not in ("user", "model") or not content.get("parts"):
                return error(400, "Please use a valid role: user, model.")
        problem = gemini_problem(contents)
        if problem:
            return error(400, problem)
        config = body.get("generationConfig") or {}
        if config.get("responseJsonSchema") is not None and (
                config.get("responseMimeType") != "application/json"):
            return error(400, "responseJsonSchema requires responseMimeType application/json")
        if contents[-1]["role"] == "model" and _REJECTS_MODEL_TURN.match(model):
            return error(400, MODEL_TURN)
        text = self.reply
        finish = self.finish_reason
        for stop in config.get("stopSequences") or []:
            at = text.find(stop)
            if at != -1:
                text = text[:at]
        usage = {"promptTokenCount": sum(len(json.dumps(c).split()) for c in contents),
                 "candidatesTokenCount": max(1, len(text.split())),
                 "totalTokenCount": 0}
        if self.thoughts:
            usage["thoughtsTokenCount"] = self.thoughts
        usage["totalTokenCount"] = sum(v for k, v in usage.items() if k != "totalTokenCount")
        if method.startswith("stream"):
            return Reply(events=self._frames(model, text, finish, usage),
                         cut_after=self.cut_after, delay=self.delay)
        return Reply(json_body=self._response(model, text, finish, usage), delay=self.delay)

    def _response(self, model: str, text: str, finish: str | None,
                  usage: dict[str, int] | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"},
                                     "index": 0}
        if finish is not None:
            candidate["finishReason"] = finish
        response: dict[str, Any] = {"candidates": [candidate], "modelVersion": model,
                                    "responseId": "fake-response"}
        if usage is not None:
            response["usageMetadata"] = usage
        return response

    def _frames(self, model: str, text: str, finish: str,
                usage: dict[str, int]) -> list[str]:
        pieces = split_text(text, self.chunk_size)
        frames = []
        for n, piece in enumerate(pieces):
            if self.error_after_chunks is not None and n == self.error_after_chunks:
                frames.append(sse_data(error_body(503, "The model is overloaded.")))
                return frames
            last = n == len(pieces) - 1 and not self.unfinished
            frames.append(sse_data(self._response(model, piece, finish if last else None,
                                                  usage if last else None)))
        return frames

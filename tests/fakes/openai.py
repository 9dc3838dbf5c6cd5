"""A fake Chat Completions server: OpenAI, or an OpenAI-compatible server with its own prefill
behaviour (``mode``), spoken over real HTTP so the real openai SDK is exercised end to end.

Modes, modelled on what the real servers do (see docs/PREFILL notes in /work/shared):

* ``openai``: no prefill. The "model" follows the emulation instruction found in the system
  or developer message (``<reply_prefix>...</reply_prefix>``) as scripted by ``echo``:
  ``"echo"`` repeats the prefill, ``"no_echo"`` starts right after it, ``"preamble"`` says
  "Sure, here it is:" on a line of its own first. A trailing assistant message is a finished
  turn: the reply is a fresh one.
* ``vllm``: ``continue_final_message`` continues the trailing assistant message (eats);
  400 when ``add_generation_prompt`` is also true (vLLM's default is true).
* ``deepseek``: ``prefix: true`` on the final assistant message continues it (eats, or
  echoes with ``echoes=True``); 400 unless the path is under ``/beta``.
* ``llama``: older llama-server builds, Ollama: a trailing assistant message is continued
  (eats).
* ``llama-server``: what llama-server 0c1e570 (the build vendored in llama-cpp-python 0.3.36)
  was measured to do: a trailing assistant message is continued and **echoed**, streamed or
  not (``prefix`` is ignored); ``continue_final_message`` with ``add_generation_prompt: false``
  echoes when not streaming and returns only the continuation when streaming; both flags
  true (or ``continue_final_message`` alone: the generation prompt defaults to true) is a 400.
* ``fresh``: llama-cpp-python's own server: a trailing assistant turn is closed and a new
  one answered, whatever the flags (the prefill does nothing).

Reasoning (#28): with ``reasoning`` set, the model thinks first, unless the request turns the
template's thinking off (``chat_template_kwargs: {"enable_thinking": false}``, the Qwen3
switch vLLM and llama-server pass to the template); the thinking comes back in
``reasoning_field`` (``reasoning_content``: DeepSeek, vLLM, llama-server; ``reasoning``:
vLLM's newer name, OpenRouter), on the message, or as deltas before the content's. In
``llama-server`` mode a thinking template refuses a trailing assistant message with llama.cpp's
400 "Assistant response prefill is incompatible with enable_thinking." (common/chat.cpp).

The "model" continues a prefill ending in "Thursday," with " Friday" (what a probe asks), any
other prefill with ``continuation``.

Tools: a request with ``tools`` takes the next of ``tool_calls`` (a list of
``{"id", "name", "arguments"}`` per reply, arguments as JSON text): the message's
``tool_calls`` with ``content`` null (or ``tool_text``, what the model says before calling),
finish_reason ``tool_calls``, the thinking first where the model thinks; streamed as the API
does, the reasoning deltas, the text's, then the first delta of each call with its index, id,
type and name and empty arguments, then the arguments in pieces. As the API does, an
assistant ``tool_calls`` message not followed by a ``role: tool`` message for each id is a
400.

Tool calling as the servers do it (``tool_parser`` False: llama-server without ``--jinja``,
vLLM without ``--enable-auto-tool-choice``): ``llama-server`` mode refuses ``tools`` with
llama.cpp's 500 ``tools param requires --jinja flag``; ``vllm`` mode refuses ``tool_choice``
"auto" and "required" with its 400s (vLLM 0.32.0, measured) and serves a named function
(its guided decoding). A
request carrying a grammar (``grammar``: llama-server; ``structured_outputs.grammar``: vLLM)
gets the next scripted calls written as ``<tool_call>`` text (or the usual text when none is
scripted), and a 400 when the grammar (GBNF, read with llguidance) does not accept that text:
what a real server's constrained decoding would never produce.

Queued replies (``enqueue``) are served first, one per request, for error scripts.
"""

from __future__ import annotations

import json
import re
import sys
from collections import deque
from typing import Any

from tests.fakes.base import FakeServer, RecordedRequest, Reply, sse
from tests.fakes.shapes import openai_problem

__all__ = ["FRESH_TURN", "PREAMBLE", "THINKING_PREFILL", "FakeOpenAI", "error_body",
           "error_reply"]

PREAMBLE = "Sure, here it is:\n"
#: What a server says when it starts a new turn instead of continuing the prefill.
FRESH_TURN = "[a fresh turn that ignores the prefill]"

#: llama.cpp's refusal of a prefill while the template thinks (ggml-org/llama.cpp#21889).
THINKING_PREFILL = "Assistant response prefill is incompatible with enable_thinking."

_PREFIX_TAG = re.compile(r"<reply_prefix>(.*?)</reply_prefix>", re.DOTALL)


def error_body(message: str, type_: str = "invalid_request_error",
               code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_reply(status: int, message: str, type_: str = "invalid_request_error",
                code: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, json_body=error_body(message, type_, code),
                 headers=headers or {})


class FakeOpenAI(FakeServer):
    def __init__(
        self,
        mode: str = "openai",
        *,
        continuation: str = " and the rest of the reply.",
        echo: str = "echo",
        echoes: bool = False,
        api_key: str | None = None,
        models: tuple[str, ...] | None = None,
        chunk_size: int = 4,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.continuation = continuation
        self.echo = echo
        self.echoes = echoes
        self.api_key = api_key
        self.models = models
        self.chunk_size = chunk_size
        self.queue: deque[Reply] = deque()
        #: Stream tweaks for the default reply.
        self.cut_after: int | None = None
        self.malformed_after: int | None = None
        self.delay = 0.0
        #: A 200 whose body is not JSON (non-streaming).
        self.invalid_json = False
        #: The finish_reason of every reply.
        self.finish_reason = "stop"
        #: Streaming: end with [DONE] but no chunk carrying a finish_reason.
        self.unfinished = False
        #: The model's thinking ("" for a model that does not think), and its field.
        self.reasoning = ""
        self.reasoning_field = "reasoning_content"
        #: Set per request: whether this reply thinks.
        self._thinks = False
        #: Per reply to a request with tools: the calls it makes.
        self.tool_calls: list[list[dict[str, str]]] = []
        #: What a reply that calls tools says before its calls ("": content null).
        self.tool_text = ""
        #: The server parses tool calls itself (llama-server --jinja; vLLM
        #: --enable-auto-tool-choice --tool-call-parser ...).
        self.tool_parser = True
        #: The grammars requests carried (GBNF), in order.
        self.grammars: list[str] = []

    def start(self) -> FakeOpenAI:
        super().start()
        httpd = self._httpd
        assert httpd is not None
        report = httpd.handle_error

        def handle_error(request: Any, client_address: Any) -> None:
            # The SDK closes a stream's connection right after [DONE]; the idle keep-alive
            # read then sees a reset. That is normal client behaviour, not a server failure
            # worth a traceback (which would land in CliRunner's captured output).
            if isinstance(sys.exc_info()[1], ConnectionError):
                return
            report(request, client_address)

        httpd.handle_error = handle_error  # type: ignore[method-assign]
        return self

    def enqueue(self, *replies: Reply) -> None:
        self.queue.extend(replies)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # -- behaviour -----------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Reply:
        if self.queue:
            return self.queue.popleft()
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            return error_reply(404, f"Invalid URL ({request.method} {request.path})")
        if self.api_key is not None and request.headers.get("authorization") != (
            f"Bearer {self.api_key}"
        ):
            given = request.headers.get("authorization", "").removeprefix("Bearer ")
            masked = given[:3] + "*" * 6 + given[-4:] if given else ""
            return error_reply(401, f"Incorrect API key provided: {masked}. You can find your "
                               "API key at https://platform.openai.com/account/api-keys.",
                               code="invalid_api_key")
        body = request.body
        if not isinstance(body, dict):
            return error_reply(400, "We could not parse the JSON body of your request.")
        model = body.get("model")
        if self.models is not None and model not in self.models:
            return error_reply(404, f"The model `{model}` does not exist or you do not have "
                               "access to it.", code="model_not_found")
        problem = openai_problem(body.get("messages") or [])
        if problem:
            return error_reply(400, problem)
        kwargs = body.get("chat_template_kwargs") or {}
        self._thinks = bool(self.reasoning) and kwargs.get("enable_thinking") is not False
        messages = body.get("messages") or []
        if (self.mode == "llama-server" and self._thinks and messages
                and messages[-1].get("role") == "assistant"):
            return error_reply(400, THINKING_PREFILL)
        unanswered = _unanswered_calls(body.get("messages") or [])
        if unanswered:
            return error_reply(400, unanswered)
        refused = self._tool_refusal(body)
        if refused is not None:
            return refused
        grammar = body.get("grammar") if self.mode == "llama-server" else (
            (body.get("structured_outputs") or {}).get("grammar") if self.mode == "vllm" else None)
        if body.get("tools") and self.tool_calls:
            calls = self.tool_calls.pop(0)
            named = body.get("tool_choice")
            if isinstance(named, dict) and self.mode != "llama-server":
                # A named choice forces that function (llama-server reads it as "auto").
                calls = [{**c, "name": named["function"]["name"]} for c in calls]
            return self._calls(str(model), calls, body)
        result = self._answer(request.path, body, stream=bool(body.get("stream")))
        if grammar is not None:
            self.grammars.append(grammar)
            if self.tool_calls:
                result = "".join(_call_text(c) for c in self.tool_calls.pop(0))
            from tests.grammar import accepts  # llguidance, loaded only where a grammar comes

            if isinstance(result, str) and not accepts(grammar, result):
                return error_reply(400, f"the reply {result!r} does not match the grammar")
        if isinstance(result, Reply):
            return result
        if self.invalid_json and not body.get("stream"):
            return Reply(raw_body=b'{"id": "chatcmpl-1", "choices": [', delay=self.delay)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return Reply(events=self._events(str(model), result, include_usage),
                         cut_after=self.cut_after, delay=self.delay)
        return Reply(json_body=self._completion(str(model), result), delay=self.delay)

    def _tool_refusal(self, body: dict[str, Any]) -> Reply | None:
        """The servers' refusals of tools they cannot call (measured on the real ones)."""
        if self.tool_parser or not body.get("tools"):
            return None
        if self.mode == "llama-server":
            return error_reply(500, "tools param requires --jinja flag", type_="server_error")
        choice = body.get("tool_choice", "auto")
        if self.mode == "vllm" and choice == "auto":
            return error_reply(400, '"auto" tool choice requires --enable-auto-tool-choice '
                               "and --tool-call-parser to be set", type_="BadRequestError")
        if self.mode == "vllm" and choice == "required":
            # vLLM 0.32.0's CPU build, measured (tests/realserver/test_server_tools.py).
            return error_reply(400, 'tool_choice="required" requires --tool-call-parser to be '
                               "set", type_="BadRequestError")
        return None

    def _continue(self, prefill: str | None) -> str:
        if prefill is not None and prefill.rstrip().endswith("Thursday,"):
            return " Friday"
        return self.continuation

    def _answer(self, path: str, body: dict[str, Any], stream: bool) -> str | Reply:
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        trailing = last.get("content", "") if last.get("role") == "assistant" else None
        continuation = self._continue(trailing)
        if self.mode == "openai":
            return self._emulated(messages)
        if self.mode == "fresh":
            return FRESH_TURN
        if self.mode == "llama-server":
            if body.get("continue_final_message"):
                if body.get("add_generation_prompt", True):
                    return error_reply(400, "Cannot set both add_generation_prompt and "
                                       "continue_final_message to true.")
                if trailing is None:
                    return FRESH_TURN
                return continuation if stream else trailing + continuation
            return FRESH_TURN if trailing is None else trailing + continuation
        if self.mode == "vllm":
            continue_final = bool(body.get("continue_final_message"))
            add_generation = body.get("add_generation_prompt", True)
            if continue_final and add_generation:
                return error_reply(400, "Cannot set both continue_final_message and "
                                   "add_generation_prompt to True.", type_="BadRequestError")
            if continue_final and trailing is None:
                return error_reply(400, "continue_final_message is set but the final "
                                   "message is not from the assistant.",
                                   type_="BadRequestError")
            return continuation if continue_final else FRESH_TURN
        if self.mode == "deepseek":
            if last.get("prefix"):
                if "/beta/" not in path:
                    return error_reply(400, "prefix is only available when using beta api")
                return (trailing or "") + continuation if self.echoes else continuation
            return FRESH_TURN
        if self.mode == "llama":
            return continuation if trailing is not None else FRESH_TURN
        raise AssertionError(f"unknown mode {self.mode}")

    def _emulated(self, messages: list[dict[str, Any]]) -> str:
        instructions = " ".join(str(m.get("content", "")) for m in messages
                                if m.get("role") in ("system", "developer"))
        found = _PREFIX_TAG.search(instructions)
        if not found:
            return FRESH_TURN if messages and messages[-1].get("role") == "assistant" else (
                self.continuation.lstrip())
        prefill = found.group(1)
        if self.echo == "no_echo":
            return self.continuation
        if self.echo == "preamble":
            return PREAMBLE + prefill + self.continuation
        return prefill + self.continuation

    def _calls(self, model: str, calls: list[dict[str, str]], body: dict[str, Any]) -> Reply:
        wire = [{"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]
        if not body.get("stream"):
            completion = self._completion(model, "")
            choice = completion["choices"][0]
            choice["finish_reason"] = "tool_calls"
            choice["message"].update(content=self.tool_text or None, tool_calls=wire)
            return Reply(json_body=completion)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = [sse(self._chunk(model, {"role": "assistant", "content": None}, None,
                                  include_usage))]
        size = self.chunk_size
        for field, text in ((self.reasoning_field, self.reasoning if self._thinks else ""),
                            ("content", self.tool_text)):
            events += [sse(self._chunk(model, {field: text[i:i + size]}, None, include_usage))
                       for i in range(0, len(text), size)]
        for index, call in enumerate(calls):
            events.append(sse(self._chunk(model, {"tool_calls": [{
                "index": index, "id": call["id"], "type": "function",
                "function": {"name": call["name"], "arguments": ""}}]}, None, include_usage)))
            text = call["arguments"]
            for i in range(0, len(text), 5):
                events.append(sse(self._chunk(model, {"tool_calls": [{
                    "index": index, "function": {"arguments": text[i:i + 5]}}]}, None,
                    include_usage)))
        events.append(sse(self._chunk(model, {}, "tool_calls", include_usage)))
        if include_usage:
            events.append(sse({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                               "created": 1700000000, "model": model, "choices": [],
                               "usage": self._usage()}))
        events.append(sse("[DONE]"))
        return Reply(events=events)

    # -- wire format ---------------------------------------------------------------------

    @staticmethod
    def _usage() -> dict[str, Any]:
        return {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                "completion_tokens_details": {"reasoning_tokens": 0}}

    def _thought(self) -> dict[str, str]:
        return {self.reasoning_field: self.reasoning} if self._thinks else {}

    def _completion(self, model: str, text: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000,
            "model": model, "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "finish_reason": self.finish_reason, "logprobs": None,
                         "message": {"role": "assistant", "content": text, "refusal": None,
                                     **self._thought()}}],
            "usage": self._usage(),
        }

    def _chunk(self, model: str, delta: dict[str, Any], finish: str | None,
               include_usage: bool) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
            "model": model, "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}],
        }
        if include_usage:
            chunk["usage"] = None
        return chunk

    def _events(self, model: str, text: str, include_usage: bool) -> list[str]:
        events = [sse(self._chunk(model, {"role": "assistant", "content": ""}, None,
                                  include_usage))]
        size = self.chunk_size
        for i in range(0, len(self.reasoning) if self._thinks else 0, size):
            events.append(sse(self._chunk(model, {self.reasoning_field: self.reasoning[i:i + size]},
                                          None, include_usage)))
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        for n, piece in enumerate(pieces):
            if self.malformed_after is not None and n == self.malformed_after:
                events.append('data: {"id": "chatcmpl-fake", "choices": [{"delta": \n\n')
            events.append(sse(self._chunk(model, {"content": piece}, None, include_usage)))
        if not self.unfinished:
            events.append(sse(self._chunk(model, {}, self.finish_reason, include_usage)))
        if include_usage:
            events.append(sse({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                               "created": 1700000000, "model": model, "choices": [],
                               "usage": self._usage()}))
        events.append(sse("[DONE]"))
        return events


def _call_text(call: dict[str, str]) -> str:
    return ('<tool_call>{"name": ' + json.dumps(call["name"]) + ', "arguments": '
            + call["arguments"] + "}</tool_call>")


def _unanswered_calls(messages: list[dict[str, Any]]) -> str | None:
    """OpenAI's 400 for an assistant message with ``tool_calls`` whose ids are not each
    answered by a following ``role: tool`` message."""
    for n, message in enumerate(messages):
        if message.get("role") != "assistant" or not message.get("tool_calls"):
            continue
        answered = set()
        for later in messages[n + 1:]:
            if later.get("role") != "tool":
                break
            answered.add(later.get("tool_call_id"))
        missing = [c["id"] for c in message["tool_calls"] if c["id"] not in answered]
        if missing:
            return ("An assistant message with 'tool_calls' must be followed by tool messages "
                    "responding to each 'tool_call_id'. The following tool_call_ids did not "
                    f"have response messages: {', '.join(missing)}")
    return None


"""Scriptable test models, one per prefill capability. Test-only: never shipped.

Each model answers with ``-o reply TEXT`` (default: a reply derived from the prompt), split
into chunks of ``-o chunk_size N``; ``-o fail_after N`` raises a provider error after N chunks
and ``-o delay S`` sleeps between chunks (for interrupt tests). What comes back on the "wire"
imitates the capability:

* test-eats: the continuation only;
* test-echoes: the prefill, then the continuation (``-o echo 0`` to forget the echo);
* test-emulated: ``-o style repeat|skip|preamble`` — repeat the prefill, start after it, or
  write "Sure, here it is:" first;
* test-unsupported: refuses prefills (the core stops them before ``execute``);
* test-keyed: eats, and needs the key ``testkey`` (env ``TESTKEY_API_KEY``);
* test-tools: eats, and calls tools natively: queue its turns (``ToolCall`` events among the
  chunks); a turn that carries tool results and has nothing queued answers
  ``results: OUTPUT; ...``.

``-o thinking TEXT`` (or ``LLMCLI_TEST_THINKING=TEXT``, for a server's test) makes a model
reason first: TEXT comes back as :class:`~llmcli.models.Reasoning` chunks (``chunk_size`` at
a time) before the reply.

In-process tests can also queue exact wire replies: ``TestModel.queue.append([...chunks])``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import ClassVar, Literal

from pydantic import Field

from llmcli import (
    KeySpec,
    Model,
    Options,
    PrefillSupport,
    ProviderError,
    Request,
    ToolSupport,
    Usage,
)
from llmcli.models import Chunk, PrefillSent, Reasoning


class TestOptions(Options):
    reply: str | None = None
    chunk_size: int = Field(default=4, ge=1)
    fail_after: int | None = Field(default=None, ge=0)
    delay: float = Field(default=0.0, ge=0, le=10)
    echo: bool = True
    style: Literal["repeat", "skip", "preamble"] = "repeat"
    #: Imitate a backend that must send the prefill without trailing whitespace.
    trim_prefill: bool = False
    max_tokens: int = Field(default=100, ge=1, le=10_000)
    #: Fail like a careless provider that repeats the key in its error message.
    leak_key: bool = False
    #: Report this many prompt tokens as read from a prompt cache (``Usage.details``).
    cached: int | None = Field(default=None, ge=0)
    #: The model's reasoning, returned before the reply (as a thinking model's).
    thinking: str | None = None
    #: Stop after this many chunks, as a reply that reached its token limit (0: never).
    cut_after: int = Field(default=0, ge=0)


class TestModel(Model):
    __test__ = False  # not a pytest class
    Options = TestOptions
    #: Exact wire replies (lists of chunks) served before any scripted reply.
    queue: ClassVar[list[list[Chunk]]] = []
    #: Every request executed, for assertions.
    requests: ClassVar[list[Request]] = []

    def __init__(self, model_id: str, support: PrefillSupport, key: KeySpec | None = None,
                 tools: ToolSupport = ToolSupport.NONE):
        self.model_id = model_id
        self.aliases = (model_id.replace("test-", "t-"),)
        self.prefill_support = support
        self.needs_key = key
        self.tool_support = tools

    def wire_text(self, request: Request, sent: str) -> str:
        options = request.options
        assert isinstance(options, TestOptions)
        continuation = options.reply
        if continuation is None and request.tool_results:
            continuation = "results: " + "; ".join(r.output for r in request.tool_results)
        if continuation is None:
            continuation = f"reply to: {request.prompt}"
        if self.prefill_support is PrefillSupport.ECHOES_PREFIX and options.echo:
            return sent + continuation
        if self.prefill_support is PrefillSupport.EMULATED and request.prefill:
            if options.style == "repeat":
                return request.prefill + continuation
            if options.style == "preamble":
                return "Sure, here it is:\n" + request.prefill + continuation
        return continuation

    def execute(self, request: Request) -> Iterator[Chunk]:
        TestModel.requests.append(request)
        options = request.options
        assert isinstance(options, TestOptions)
        if options.leak_key:
            raise ProviderError(f"test provider: 401 invalid key {request.key!r}", status=401,
                                provider="test")
        sent = request.prefill
        if options.trim_prefill and sent != sent.rstrip():
            sent = sent.rstrip()
            yield PrefillSent(sent)
        if TestModel.queue:
            chunks = TestModel.queue.pop(0)
        else:
            text = self.wire_text(request, sent)
            size = options.chunk_size
            chunks = [text[i : i + size] for i in range(0, len(text), size)]
        thought = options.thinking or os.environ.get("LLMCLI_TEST_THINKING", "")
        for i in range(0, len(thought), options.chunk_size):
            if options.delay:
                time.sleep(options.delay)
            yield Reasoning(thought[i:i + options.chunk_size])
        produced = 0
        stop_reason = "end_turn"
        if options.cut_after and len(chunks) > options.cut_after:
            chunks, stop_reason = chunks[:options.cut_after], "max_tokens"
        for i, chunk in enumerate(chunks):
            if options.fail_after is not None and i >= options.fail_after:
                raise ProviderError("test provider: connection reset mid-stream", status=None,
                                    provider="test")
            if options.delay:
                time.sleep(options.delay)
            produced += 1
            yield chunk
        yield Usage(input_tokens=len(request.prompt.split()), output_tokens=produced,
                    stop_reason=stop_reason,
                    details={} if options.cached is None else {"cached_tokens": options.cached})


def all_models() -> list[TestModel]:
    return [
        TestModel("test-eats", PrefillSupport.EATS_PREFIX),
        TestModel("test-echoes", PrefillSupport.ECHOES_PREFIX),
        TestModel("test-emulated", PrefillSupport.EMULATED),
        TestModel("test-unsupported", PrefillSupport.UNSUPPORTED),
        TestModel("test-keyed", PrefillSupport.EATS_PREFIX, KeySpec("testkey", "TESTKEY_API_KEY")),
        TestModel("test-tools", PrefillSupport.EATS_PREFIX, tools=ToolSupport.NATIVE),
    ]


def register_models(register: Callable[[Model], None]) -> None:
    # Installed by the test command into the development venv; stay invisible to a user
    # running that venv unless a test asks for these models.
    if not os.environ.get("LLMCLI_TEST_MODELS"):
        return
    for model in all_models():
        register(model)

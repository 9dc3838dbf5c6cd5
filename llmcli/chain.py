"""The tool-call loop: a prompt, the tools the model calls, their results sent back, the next
turn, until a reply calls no tool or the chain's limit is reached.

``model.chain(...)`` and ``conversation.chain(...)`` return a :class:`ChainResponse` (an
:class:`AsyncChainResponse` from an async model, whose tools may be ``async def``). Each
turn is an ordinary :class:`~llmcli.response.Response` of one conversation, logged as it ends;
the turn after a tool call carries its results (``tool_results`` in the log). The prefill is
the start of the first turn's text; a turn after a tool result takes none unless the chain
was given ``prefill_final`` (the start of the answer given once the tools have run).

A call that cannot be answered (an unknown tool, arguments that do not fit, a tool that
raises or returns something that is not JSON) stops the chain with its one-line
:class:`~llmcli.errors.ToolError`; the turn that would have carried the results is logged as
an error with them, so the log keeps what happened.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from llmcli.errors import ChainLimitError, ToolError
from llmcli.prepare import prepare_async_response, prepare_response
from llmcli.record import ResponseRecord, ToolCall, ToolResult
from llmcli.request import Reasoning, Usage
from llmcli.response import AsyncResponse, AsyncRun, BaseResponse, Response, Run
from llmcli.spec import PromptSpec
from llmcli.tools import run_call, run_call_async

if TYPE_CHECKING:
    from llmcli.contract import Model
    from llmcli.tools import Tool

__all__ = ["DEFAULT_CHAIN_LIMIT", "AsyncChainResponse", "ChainResponse", "ChainSettings"]

#: How many responses a chain may make (llm's default too).
DEFAULT_CHAIN_LIMIT = 5

#: Called before each tool call; returning False declines it (the model is told so).
BeforeCall = Callable[["Tool | None", ToolCall], bool]
#: Called after each tool call with its result.
AfterCall = Callable[["Tool | None", ToolCall, ToolResult], None]

DECLINED = "Error: the user declined this tool call"

_R = TypeVar("_R", bound=BaseResponse)


@dataclass(frozen=True)
class ChainSettings:
    """A chain's own settings, beside its first turn's spec: ``chain_limit`` bounds the
    responses (None: no limit), ``prefill_final`` starts each turn after a tool result,
    ``before_call`` may decline a call, ``after_call`` sees each result."""

    chain_limit: int | None = DEFAULT_CHAIN_LIMIT
    prefill_final: str | None = None
    before_call: BeforeCall | None = None
    after_call: AfterCall | None = None


class _Chain(Generic[_R]):
    """What a chain keeps and decides, with or without an event loop: its turns, the next
    turn's spec, the calls declined, the limit, a failed call logged with its results."""

    def __init__(self, model: Model, spec: PromptSpec,
                 settings: ChainSettings = ChainSettings()) -> None:
        self.model = model
        self.spec = spec
        self.chain_limit = settings.chain_limit
        self.prefill_final = settings.prefill_final
        self.before_call = settings.before_call
        self.after_call = settings.after_call
        self.responses: list[_R] = [self._prepare(model, spec)]
        self._chunks: list[str] = []
        self._finished = False

    def _prepare(self, model: Model, spec: PromptSpec) -> _R:
        raise NotImplementedError

    @property
    def last(self) -> _R:
        """The chain's latest turn (its final answer once the chain has run)."""
        return self.responses[-1]

    def reasoning_so_far(self) -> str | None:
        found = [text for r in self.responses if (text := r.reasoning_so_far())]
        return "\n\n".join(found) if found else None

    # The surface the command line uses on a Response, for the chain as a whole.
    @property
    def prefill(self) -> str:
        return self.spec.prefill or ""

    @property
    def log_error(self) -> str | None:
        return next((r.log_error for r in self.responses if r.log_error), None)

    def record(self) -> ResponseRecord:
        return self.last.record()

    def to_dict(self) -> dict[str, Any]:
        """The last turn as ``Response.to_dict`` shows it, with every turn under
        ``responses`` (``llmcli --json`` with tools)."""
        return {**self.last.to_dict(), "responses": [r.to_dict() for r in self.responses]}

    def _ended(self) -> bool:
        return self._finished

    def _kept(self) -> list[str]:
        return list(self._chunks)

    def _results_so_far(self) -> list[ToolResult]:
        return [result for response in self.responses
                for result in response.request.tool_results]

    def _done(self, calls: list[ToolCall]) -> bool:
        if not calls:
            self._finished = True
        return not calls

    @contextlib.contextmanager
    def _answering(self, response: _R) -> Iterator[list[ToolResult]]:
        """The results of ``response``'s calls, appended by the caller inside; then the next
        turn, carrying them, prepared. A call that fails, or the limit, ends the chain: the
        turn that would have been sent is logged as an error, with the results."""
        results: list[ToolResult] = []
        # The turn that carries the results has no prompt of its own, nor the first turn's
        # attachments: the conversation already holds them.
        next_spec = self.spec.replace(
            prompt="", prefill=self.prefill_final or None, tool_results=(),
            attachments=(), tool_choice="auto", conversation=response.conversation)
        try:
            yield results
        except ToolError as error:
            if isinstance(error.result, ToolResult):
                results.append(error.result)
            self._record_failure(next_spec.replace(tool_results=tuple(results)), error)
            raise
        next_spec = next_spec.replace(tool_results=tuple(results))
        if self.chain_limit is not None and len(self.responses) >= self.chain_limit:
            limit = ChainLimitError(
                f"The tool chain reached its limit of {self.chain_limit} responses while "
                f"the model still called tools (raise it with --chain-limit)")
            self._record_failure(next_spec, limit)
            raise limit
        self.responses.append(self._prepare(self.model, next_spec))

    def _tool(self, call: ToolCall) -> Tool | None:
        return next((t for t in self.spec.tools if t.name == call.name), None)

    def _declined(self, call: ToolCall) -> ToolResult | None:
        """The result of a call ``before_call`` declines (None: run it)."""
        if self.before_call is not None and not self.before_call(self._tool(call), call):
            return ToolResult(call.id, call.name, DECLINED, error="declined")
        return None

    def _answered(self, call: ToolCall, result: ToolResult | ToolError) -> ToolResult:
        """Hand a call's result (or the error it ended with) to ``after_call``."""
        recorded = result.result if isinstance(result, ToolError) else result
        if self.after_call is not None and isinstance(recorded, ToolResult):
            self.after_call(self._tool(call), call, recorded)
        if isinstance(result, ToolError):
            raise result
        return result

    def _record_failure(self, spec: PromptSpec, error: ToolError | ChainLimitError) -> None:
        """Log the turn that will not be sent, with the results it would have carried."""
        response = self._prepare(self.model, spec)
        response.fail(error)
        self.responses.append(response)
        self._finished = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model.model_id!r} {len(self.responses)} responses>"


class ChainResponse(_Chain[Response], Run[str]):
    """The turns of one tool chain. Iterate it for the text of every turn as it arrives;
    ``text()`` joins it all; ``responses`` holds each turn's Response."""

    def _prepare(self, model: Model, spec: PromptSpec) -> Response:
        return prepare_response(model, spec)

    def __iter__(self) -> Iterator[str]:
        return self._read()

    def parts(self) -> Iterator[str | Reasoning]:
        """The text of every turn as it arrives, as :meth:`Response.parts
        <llmcli.response.Response.parts>` gives it (a chain streams no reasoning; each
        turn's is on its Response, and :attr:`reasoning` joins them)."""
        yield from self

    @property
    def reasoning(self) -> str | None:
        """The turns' reasoning, joined; None where no turn returned any."""
        found = [r.reasoning for r in self.responses if r.reasoning]
        return "\n\n".join(found) if found else None

    def text(self) -> str:
        for _ in self:
            pass
        return "".join(self._chunks)

    def tool_calls(self) -> list[ToolCall]:
        """Every tool call the chain's turns made, in order (it runs the chain)."""
        self.text()
        return [call for response in self.responses for call in response.tool_calls()]

    def tool_results(self) -> list[ToolResult]:
        self.text()
        return self._results_so_far()

    @property
    def continuation(self) -> str:
        return self.text()[len(self.prefill):]

    def usage(self) -> Usage:
        """The last turn's usage (``record()`` is the last turn's too)."""
        self.text()
        return self.last.usage()

    def close(self) -> None:
        self.last.close()

    def _run(self) -> Generator[str, None, None]:
        while True:
            response = self.responses[-1]
            for chunk in response:
                self._chunks.append(chunk)
                yield chunk
            calls = response.tool_calls()
            if self._done(calls):
                return
            with self._answering(response) as results:
                for call in calls:
                    results.append(self._answer(call))

    def _answer(self, call: ToolCall) -> ToolResult:
        declined = self._declined(call)
        if declined is not None:
            return declined
        try:
            result: ToolResult | ToolError = run_call(self.spec.tools, call)
        except ToolError as error:
            result = error
        return self._answered(call, result)


class AsyncChainResponse(_Chain[AsyncResponse], AsyncRun[str]):
    """:class:`ChainResponse` on an event loop: ``async for`` gives the text of every turn
    as it arrives, ``await chain`` runs it to its end (and returns it), ``await
    chain.text()`` joins it. A tool may be an ``async def`` function (awaited on the loop);
    a plain one runs on a worker thread."""

    def _prepare(self, model: Model, spec: PromptSpec) -> AsyncResponse:
        return prepare_async_response(model, spec)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._read()

    def __await__(self) -> Any:
        return self._finish().__await__()

    async def _finish(self) -> AsyncChainResponse:
        async for _ in self:
            pass
        return self

    async def text(self) -> str:
        await self._finish()
        return "".join(self._chunks)

    async def tool_calls(self) -> list[ToolCall]:
        """Every tool call the chain's turns made, in order (it runs the chain)."""
        await self._finish()
        return [call for response in self.responses for call in response._tool_calls]

    async def tool_results(self) -> list[ToolResult]:
        await self._finish()
        return self._results_so_far()

    async def usage(self) -> Usage:
        """The last turn's usage."""
        await self._finish()
        return await self.last.usage()

    async def _run(self) -> AsyncGenerator[str, None]:
        while True:
            response = self.responses[-1]
            async for chunk in response:
                self._chunks.append(chunk)
                yield chunk
            calls = await response.tool_calls()
            if self._done(calls):
                return
            with self._answering(response) as results:
                for call in calls:
                    results.append(await self._answer(call))

    async def _answer(self, call: ToolCall) -> ToolResult:
        declined = self._declined(call)
        if declined is not None:
            return declined
        try:
            result: ToolResult | ToolError = await run_call_async(self.spec.tools, call)
        except ToolError as error:
            result = error
        return self._answered(call, result)

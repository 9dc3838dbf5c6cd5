"""The tool-call loop: a prompt, the tools the model calls, their results sent back, the next
turn, until a reply calls no tool or the chain's limit is reached.

``model.chain(...)`` and ``conversation.chain(...)`` return a :class:`ChainResponse`. Each
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

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from llmcli.errors import ChainLimitError, ToolError
from llmcli.prepare import prepare_response
from llmcli.record import ResponseRecord, ToolCall, ToolResult
from llmcli.request import Reasoning, Usage
from llmcli.response import Response
from llmcli.spec import PromptSpec
from llmcli.tools import run_call

if TYPE_CHECKING:
    from llmcli.contract import Model
    from llmcli.tools import Tool

__all__ = ["DEFAULT_CHAIN_LIMIT", "ChainResponse"]

#: How many responses a chain may make (llm's default too).
DEFAULT_CHAIN_LIMIT = 5

#: Called before each tool call; returning False declines it (the model is told so).
BeforeCall = Callable[["Tool | None", ToolCall], bool]
#: Called after each tool call with its result.
AfterCall = Callable[["Tool | None", ToolCall, ToolResult], None]

DECLINED = "Error: the user declined this tool call"


class ChainResponse:
    """The turns of one tool chain. Iterate it for the text of every turn as it arrives;
    ``text()`` joins it all; ``responses`` holds each turn's Response."""

    def __init__(
        self,
        model: Model,
        spec: PromptSpec,
        *,
        chain_limit: int | None = DEFAULT_CHAIN_LIMIT,
        prefill_final: str | None = None,
        before_call: BeforeCall | None = None,
        after_call: AfterCall | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.chain_limit = chain_limit
        self.prefill_final = prefill_final
        self.before_call = before_call
        self.after_call = after_call
        self.responses: list[Response] = [prepare_response(model, spec)]
        self._chunks: list[str] = []
        self._iterator: Iterator[str] | None = None
        self._finished = False

    def __iter__(self) -> Iterator[str]:
        if self._finished:
            yield from list(self._chunks)
            return
        if self._iterator is None:
            self._iterator = self._run()
        yield from self._iterator

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

    @property
    def last(self) -> Response:
        """The chain's latest turn (its final answer once the chain has run)."""
        return self.responses[-1]

    def tool_calls(self) -> list[ToolCall]:
        """Every tool call the chain's turns made, in order (it runs the chain)."""
        self.text()
        return [call for response in self.responses for call in response.tool_calls()]

    def tool_results(self) -> list[ToolResult]:
        self.text()
        return [result for response in self.responses
                for result in response.request.tool_results]

    # The surface the command line uses on a Response, for the chain as a whole.
    @property
    def prefill(self) -> str:
        return self.spec.prefill or ""

    @property
    def continuation(self) -> str:
        return self.text()[len(self.prefill):]

    @property
    def log_error(self) -> str | None:
        return next((r.log_error for r in self.responses if r.log_error), None)

    def usage(self) -> Usage:
        """The last turn's usage (``record()`` is the last turn's too)."""
        self.text()
        return self.last.usage()

    def record(self) -> ResponseRecord:
        return self.last.record()

    def close(self) -> None:
        self.last.close()

    def to_dict(self) -> dict[str, Any]:
        """The last turn as ``Response.to_dict`` shows it, with every turn under
        ``responses`` (``llmcli --json`` with tools)."""
        return {**self.last.to_dict(), "responses": [r.to_dict() for r in self.responses]}

    def _run(self) -> Iterator[str]:
        while True:
            response = self.responses[-1]
            for chunk in response:
                self._chunks.append(chunk)
                yield chunk
            calls = response.tool_calls()
            if not calls:
                self._finished = True
                return
            results: list[ToolResult] = []
            # The turn that carries the results has no prompt of its own, nor the first
            # turn's attachments: the conversation already holds them.
            next_spec = self.spec.replace(
                prompt="", prefill=self.prefill_final or None, tool_results=(),
                attachments=(), tool_choice="auto", conversation=response.conversation)
            try:
                for call in calls:
                    results.append(self._answer(call))
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
            self.responses.append(prepare_response(self.model, next_spec))

    def _answer(self, call: ToolCall) -> ToolResult:
        tool = next((t for t in self.spec.tools if t.name == call.name), None)
        if self.before_call is not None and not self.before_call(tool, call):
            result = ToolResult(call.id, call.name, DECLINED, error="declined")
        else:
            try:
                result = run_call(self.spec.tools, call)
            except ToolError as error:
                if self.after_call is not None and isinstance(error.result, ToolResult):
                    self.after_call(tool, call, error.result)
                raise
        if self.after_call is not None:
            self.after_call(tool, call, result)
        return result

    def _record_failure(self, spec: PromptSpec, error: ToolError | ChainLimitError) -> None:
        """Log the turn that will not be sent, with the results it would have carried."""
        response = prepare_response(self.model, spec)
        response.fail(error)
        self.responses.append(response)
        self._finished = True

    def __repr__(self) -> str:
        return f"<ChainResponse {self.model.model_id!r} {len(self.responses)} responses>"

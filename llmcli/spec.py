"""One prompt, as asked: the frozen :class:`PromptSpec` every front end builds.

The command line (``llmcli prompt``, ``chat``, ``batch``), ``llmcli serve`` and the Python API
(``model.prompt(...)``, :func:`llmcli.api.prompt`) each build one spec, and
:func:`llmcli.prepare.prepare_response` turns it into a :class:`~llmcli.response.Response`.
The spec is the one place where what a prompt may carry is written down: a new field here
reaches preparation, the request and the log without a signature to copy.

It holds what was asked, unchecked: the options are validated, the schema parsed and the
key resolved by preparation, against the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from llmcli.attachments import Attachment
from llmcli.record import ToolResult
from llmcli.schema import DEFAULT_RETRIES
from llmcli.tools import Tool, as_tools

if TYPE_CHECKING:
    from llmcli.response import BaseResponse, Conversation

__all__ = ["Logger", "PromptSpec"]

#: What ``log=`` accepts besides True/False: called once with each finished Response.
Logger = Callable[["BaseResponse"], None]


@dataclass(frozen=True)
class PromptSpec:
    """A prompt and everything sent or recorded with it. Frozen: derive another with
    :meth:`replace` (a chat's turns share one spec and replace the prompt)."""

    prompt: str
    system: str | None = None
    #: The first characters of the reply (None or "" for none).
    prefill: str | None = None
    #: The model's ``-o`` options by name, validated by the model when prepared.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: A JSON Schema (a dict, JSON text or the concise ``name, age int`` form) or None.
    schema: dict[str, Any] | str | None = None
    #: Retries of the ``validated`` schema mode.
    schema_retries: int = DEFAULT_RETRIES
    #: A grammar (GBNF or Lark text) the reply must follow, or None.
    grammar: str | None = None
    stream: bool = True
    #: An explicit key or the name of a stored one; kept out of repr().
    key: str | None = field(default=None, repr=False)
    #: Log the exchange (True: to the log database when logging is on), or not, or hand it
    #: to this callable.
    log: bool | Logger = field(default=True, compare=False)
    #: The id of the reply this prompt extends (``continue_reply``): its text is the
    #: prefill, and it is not sent as an earlier turn; None for a new reply.
    continues: str | None = None
    #: The conversation this prompt continues (its earlier turns are sent), or None for a
    #: new one.
    conversation: Conversation | None = field(default=None, compare=False, repr=False)
    #: Images and documents sent with the prompt (read or fetched when prepared).
    attachments: tuple[Attachment, ...] = ()
    #: Store the attachments' content in the log (else only type, size, sha256, path/url).
    store_attachments: bool = False
    #: The tools the model may call: :class:`~llmcli.tools.Tool` objects or plain functions
    #: (made tools here, so the spec holds Tools only).
    tools: tuple[Tool, ...] = ()
    #: The results of the previous turn's tool calls (a chain's next turn; the prompt may
    #: then be empty).
    tool_results: tuple[ToolResult, ...] = ()
    #: Whether the reply may or must call a tool: "auto" (text or a call), "required" (a
    #: call), "none" (text), or one tool's name (a call of it).
    tool_choice: str = "auto"

    def __post_init__(self) -> None:
        # A copy, read-only: the caller's dict changing later cannot change this spec.
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "attachments", tuple(self.attachments))
        object.__setattr__(self, "tools", as_tools(self.tools))
        object.__setattr__(self, "tool_results", tuple(self.tool_results))

    def replace(self, **changes: Any) -> PromptSpec:
        """This spec with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, prompt: str | PromptSpec, **fields: Any) -> PromptSpec:
        """A spec from a prompt's text and fields, or a given spec with ``fields`` changed
        (what :func:`llmcli.api.prompt` and :func:`llmcli.prepare.prepare_response`
        accept)."""
        if isinstance(prompt, PromptSpec):
            return prompt.replace(**fields) if fields else prompt
        return cls(prompt, **fields)

"""The plugin contract: what a backend implements and what it imports.

A backend subclasses :class:`Model`, declares what it can do (prefill capability, streaming,
the key it needs, its ``Options``) and implements :meth:`Model.execute`, a generator that
yields text chunks and, when it knows them, :class:`Usage` and :class:`PrefillSent` events.
Everything else (capability checks, keys, normalization, logging) happens in the core:
:func:`llmcli.prepare.prepare_response` makes every check that needs no network, then a
:class:`~llmcli.response.Response` runs ``execute`` through the normalizer and hands its
record to the log.

The data a backend is handed and yields (:class:`Request`, :class:`Usage`, ...) live in
:mod:`llmcli.request` and are re-exported here, so a plugin imports from one place (or from
:mod:`llmcli.models`, which re-exports everything as before).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from llmcli.attachments import Attachment
from llmcli.capabilities import PrefillSupport, ReasoningPrefill, SchemaSupport, ToolSupport
from llmcli.chain import DEFAULT_CHAIN_LIMIT, AfterCall, BeforeCall, ChainResponse
from llmcli.prepare import prepare_response
from llmcli.request import (
    Chunk,
    KeySpec,
    Options,
    PrefillSent,
    Reasoning,
    ReasoningPrefillOption,
    Request,
    StrList,
    ToolCall,
    ToolResult,
    Usage,
    emulation_instruction,
)
from llmcli.response import Conversation, Response
from llmcli.spec import Logger, PromptSpec
from llmcli.tools import Tool

__all__ = ["Chunk", "KeySpec", "Model", "Options", "PrefillSent", "Reasoning",
           "ReasoningPrefillOption", "Request", "StrList", "ToolCall", "ToolResult", "Usage",
           "concurrency_limit", "emulation_instruction"]

#: What ``tools=`` accepts: Tool objects and plain functions.
ToolLike = Tool | Callable[..., Any]

BaseOptions = Options


class Model:
    """Base class for every model. Subclasses set the class attributes and ``execute``."""

    #: The canonical id, used with ``-m`` and stored in the log.
    model_id: str = ""
    #: Other names accepted by ``-m``.
    aliases: tuple[str, ...] = ()
    #: What the API does with a prefill (see :class:`PrefillSupport`).
    prefill_support: PrefillSupport = PrefillSupport.EATS_PREFIX
    #: Whether ``execute`` can stream chunks as they arrive.
    can_stream: bool = True
    #: The API key this model needs, or None.
    needs_key: KeySpec | None = None

    class Options(Options):
        pass

    #: The plugin this model comes from (set by plugin loading).
    plugin: str | None = None

    def get_prefill_support(self, options: BaseOptions, stream: bool = True) -> PrefillSupport:
        """The capability for a request with these options, streamed or not (override when
        it depends: some servers echo the prefill in one mode and not the other)."""
        return self.prefill_support

    def prefill_note(self) -> str:
        """A short explanation shown by ``llmcli models`` (override to explain options)."""
        return ""

    #: How the model honours ``schema=`` (see :class:`SchemaSupport`): by default the
    #: prompt asks for it and the reply is validated.
    schema_support: SchemaSupport = SchemaSupport.VALIDATED
    #: Whether ``grammar=`` (GBNF or Lark) is enforced (only native constrained decoding can).
    grammar_support: bool = False
    #: The media types of attachments (``-a``) the model takes, a subset of
    #: :data:`llmcli.attachments.TYPES` (``IMAGE_TYPES`` for a model that can see); empty:
    #: none, and a prompt with one is refused before any request. A plugin turns each
    #: resolved :class:`~llmcli.attachments.Attachment` into its wire's part (its bytes as
    #: ``base64()`` or ``data_url()``), in one function of its own.
    attachment_types: frozenset[str] = frozenset()

    def get_attachment_types(self, options: BaseOptions) -> frozenset[str]:
        """The attachment types for a request with these options (override when it depends
        on them)."""
        return self.attachment_types

    def get_schema_support(self, options: BaseOptions) -> SchemaSupport:
        """The schema capability for a request with these options (override when it
        depends on them)."""
        return self.schema_support

    def schema_refusal(self, options: BaseOptions, prefill: str) -> str | None:
        """Why this request's schema cannot be honoured together with ``prefill`` (a
        provider that refuses both at once), or None."""
        return None

    def reasoning_prefills(self) -> dict[ReasoningPrefill, str]:
        """The ``-o reasoning_prefill`` policies this model takes, each with how it is
        honoured ("native": on the wire or in the runtime; "emulated": asked for in the
        prompt). Empty (the default): the option is refused. ``llmcli models`` shows it."""
        return {}
    #: How the model calls tools (see :class:`ToolSupport`): by default it cannot.
    tool_support: ToolSupport = ToolSupport.NONE

    def get_tool_support(self, options: BaseOptions) -> ToolSupport:
        """The tool capability for a request with these options (override when it
        depends on them, or on the server behind the model)."""
        return self.tool_support

    def execute(self, request: Request) -> Iterator[Chunk]:
        """Call the backend; yield text chunks (and :class:`Reasoning`, the model's
        thinking, where it returns any), then optionally a :class:`Usage`.

        Raise :class:`llmcli.errors.ProviderError` (with the provider's own message) on
        failure. Never touch the prefill beyond sending it: the core normalizes the text.
        """
        raise NotImplementedError

    # -- user API ------------------------------------------------------------------------

    def prompt(
        self,
        prompt: str,
        *,
        system: str | None = None,
        prefill: str | None = None,
        stream: bool = True,
        key: str | None = None,
        log: bool | Logger = True,
        conversation: Conversation | None = None,
        schema: dict[str, Any] | str | None = None,
        grammar: str | None = None,
        attachments: Iterable[Attachment] = (),
        store_attachments: bool = False,
        continues: str | None = None,
        tools: Iterable[ToolLike] = (),
        tool_results: Iterable[ToolResult] = (),
        tool_choice: str = "auto",
        **options: Any,
    ) -> Response:
        """Prepare a response (see :func:`llmcli.prepare.prepare_response`); nothing is
        sent yet. The keywords are the :class:`~llmcli.spec.PromptSpec` fields; the rest are
        this model's options. With ``tools``, the reply may call them
        (``response.tool_calls()``); :meth:`chain` also runs them."""
        return prepare_response(self, PromptSpec(
            prompt, system=system, prefill=prefill, stream=stream, key=key, log=log,
            conversation=conversation, options=options, schema=schema, grammar=grammar,
            attachments=tuple(attachments), store_attachments=store_attachments,
            continues=continues,
            tools=tuple(tools), tool_results=tuple(tool_results),  # type: ignore[arg-type]
            tool_choice=tool_choice))

    def chain(
        self,
        prompt: str,
        *,
        tools: Iterable[ToolLike] = (),
        tool_choice: str = "auto",
        chain_limit: int | None = DEFAULT_CHAIN_LIMIT,
        prefill_final: str | None = None,
        before_call: BeforeCall | None = None,
        after_call: AfterCall | None = None,
        system: str | None = None,
        prefill: str | None = None,
        stream: bool = True,
        key: str | None = None,
        log: bool | Logger = True,
        conversation: Conversation | None = None,
        **options: Any,
    ) -> ChainResponse:
        """Prompt with ``tools`` and run the calls the model makes, sending each turn's
        results back, until a reply calls no tool (see :class:`llmcli.chain.ChainResponse`).
        ``chain_limit`` bounds the responses (None: no limit); ``prefill`` starts the first
        turn, ``prefill_final`` each turn after a tool result; ``tool_choice`` holds for the
        first turn (the later ones may answer in text)."""
        spec = PromptSpec(
            prompt, system=system, prefill=prefill, stream=stream, key=key, log=log,
            conversation=conversation, options=options,
            tools=tuple(tools), tool_choice=tool_choice)  # type: ignore[arg-type]
        return ChainResponse(self, spec, chain_limit=chain_limit, prefill_final=prefill_final,
                             before_call=before_call, after_call=after_call)

    def conversation(self) -> Conversation:
        return Conversation(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id!r}>"


def concurrency_limit(model: Model) -> int | None:
    """How many requests to ``model`` may run at once in one process (None: no limit), as
    ``llmcli batch`` and ``llmcli serve`` both keep it.

    A plugin declares it with a ``batch_concurrency`` attribute (the local runtime's
    models declare 8, what its scheduler batches)."""
    declared = getattr(model, "batch_concurrency", None)
    if isinstance(declared, int) and declared >= 1:
        return declared
    return None

"""The plugin contract: what a backend implements and what it imports.

A backend subclasses :class:`Model`, declares what it can do (prefill capability, streaming,
the key it needs, its ``Options``) and implements :meth:`Model.execute`, a generator that
yields text chunks and, when it knows them, :class:`Usage` and :class:`PrefillSent` events;
optionally :meth:`Model.execute_async`, the same events from an async generator (by default,
``execute`` run on a worker thread). :class:`AsyncModel` is a model's asynchronous face.
Everything else (capability checks, keys, normalization, logging) happens in the core:
:func:`llmcli.prepare.prepare_response` makes every check that needs no network, then a
:class:`~llmcli.response.Response` runs ``execute`` through the normalizer and hands its
record to the log.

The data a backend is handed and yields (:class:`Request`, :class:`Usage`, ...) live in
:mod:`llmcli.request` and are re-exported here, so a plugin imports from one place (or from
:mod:`llmcli.models`, which re-exports everything as before).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

import llmcli.request as _request
from llmcli.attachments import Attachment
from llmcli.capabilities import PrefillSupport, ReasoningPrefill, SchemaSupport, ToolSupport
from llmcli.chain import (
    DEFAULT_CHAIN_LIMIT,
    AfterCall,
    AsyncChainResponse,
    BeforeCall,
    ChainResponse,
    ChainSettings,
)
from llmcli.prepare import prepare_async_response, prepare_response
from llmcli.request import *  # noqa: F403 - the data a plugin is handed, in one import
from llmcli.request import Chunk, KeySpec, Options, Request, ToolResult
from llmcli.response import AsyncResponse, Conversation, Response
from llmcli.spec import Logger, PromptSpec
from llmcli.tools import Tool

__all__ = ["AsyncConversation", "AsyncModel", "BaseOptions", "Model", "chain_spec",
           "concurrency_limit", "has_native_async", "prompt_spec"]
__all__ += _request.__all__

#: What ``tools=`` accepts: Tool objects and plain functions.
ToolLike = Tool | Callable[..., Any]

BaseOptions = Options

_P = ParamSpec("_P")
_S = TypeVar("_S")
_T = TypeVar("_T")
_R = TypeVar("_R")


def prompt_spec(
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
) -> PromptSpec:
    """The :class:`~llmcli.spec.PromptSpec` that ``model.prompt(...)``'s keywords make (the
    same for a :class:`Model` and an :class:`AsyncModel`): the keywords are its fields, the
    rest are the model's options."""
    return PromptSpec(
        prompt, system=system, prefill=prefill, stream=stream, key=key, log=log,
        conversation=conversation, options=options, schema=schema, grammar=grammar,
        attachments=tuple(attachments), store_attachments=store_attachments,
        continues=continues,
        tools=tuple(tools), tool_results=tuple(tool_results),  # type: ignore[arg-type]
        tool_choice=tool_choice)


def chain_spec(
    prompt: str,
    *,
    chain_limit: int | None = DEFAULT_CHAIN_LIMIT,
    prefill_final: str | None = None,
    before_call: BeforeCall | None = None,
    after_call: AfterCall | None = None,
    **fields: Any,
) -> tuple[PromptSpec, ChainSettings]:
    """What ``model.chain(...)``'s keywords make: the first turn's spec (``fields`` as for
    :func:`prompt_spec`: ``tools``, ``system``, ``prefill``, the model's options...) and the
    chain's own settings."""
    return prompt_spec(prompt, **fields), ChainSettings(
        chain_limit=chain_limit, prefill_final=prefill_final, before_call=before_call,
        after_call=after_call)


def _keywords_of(build: Callable[_P, _T]) -> Callable[
        [Callable[[_S, _T], _R]], Callable[Concatenate[_S, _P], _R]]:
    """A method that takes what ``build`` makes, called with ``build``'s parameters: the
    keyword list is written once (in ``build``) for every method that takes it."""
    def decorate(method: Callable[[_S, _T], _R]) -> Callable[Concatenate[_S, _P], _R]:
        @functools.wraps(method)
        def taking(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            return method(self, build(*args, **kwargs))

        own = inspect.signature(build)
        first = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        taking.__signature__ = own.replace(  # type: ignore[attr-defined]
            parameters=[first, *own.parameters.values()],
            return_annotation=inspect.signature(method).return_annotation)
        taking.__doc__ = method.__doc__
        return taking
    return decorate


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

    async def execute_async(self, request: Request) -> AsyncIterator[Chunk]:
        """The events of :meth:`execute`, for an event loop (what an
        :class:`~llmcli.response.AsyncResponse` reads). By default ``execute`` runs on a
        worker thread of its own, its events handed over as they come; a backend with an
        asynchronous client overrides this so that a request holds no thread while it
        waits. The same events, the same errors."""
        from llmcli.bridge import iterate_on_thread  # asyncio: not at the CLI's start-up

        async for event in iterate_on_thread(lambda: self.execute(request),
                                             name=f"llmcli-{self.model_id}"):
            yield event

    def native_async(self) -> bool:
        """Whether :meth:`execute_async` is the backend's own (see
        :func:`has_native_async`); a template that falls back to the default says so."""
        return type(self).execute_async is not Model.execute_async

    # -- user API ------------------------------------------------------------------------

    @_keywords_of(prompt_spec)
    def prompt(self, spec: PromptSpec) -> Response:
        """Prepare a response (see :func:`llmcli.prepare.prepare_response`); nothing is
        sent yet. The keywords are the :class:`~llmcli.spec.PromptSpec` fields
        (:func:`prompt_spec`); the rest are this model's options. With ``tools``, the reply
        may call them (``response.tool_calls()``); :meth:`chain` also runs them."""
        return prepare_response(self, spec)

    @_keywords_of(chain_spec)
    def chain(self, made: tuple[PromptSpec, ChainSettings]) -> ChainResponse:
        """Prompt with ``tools`` and run the calls the model makes, sending each turn's
        results back, until a reply calls no tool (see :class:`llmcli.chain.ChainResponse`).
        ``chain_limit`` bounds the responses (None: no limit); ``prefill`` starts the first
        turn, ``prefill_final`` each turn after a tool result; ``tool_choice`` holds for the
        first turn (the later ones may answer in text). The other keywords are
        :meth:`prompt`'s (:func:`chain_spec`)."""
        spec, settings = made
        return ChainResponse(self, spec, settings)

    def conversation(self) -> Conversation:
        return Conversation(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id!r}>"


def has_native_async(model: Model) -> bool:
    """Whether ``model``'s requests hold no thread while they wait (its own
    ``execute_async``), rather than running ``execute`` on a worker thread."""
    return model.native_async()


class AsyncModel:
    """A model's asynchronous face (:func:`llmcli.get_async_model`): ``prompt`` takes the
    same keywords as :meth:`Model.prompt` and makes the same checks before any request, and
    returns an :class:`~llmcli.response.AsyncResponse`; ``chain`` an
    :class:`~llmcli.chain.AsyncChainResponse`. Everything else is the model's."""

    def __init__(self, model: Model) -> None:
        self.model = model

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def __getattr__(self, name: str) -> Any:
        # Capabilities, options, aliases: the model's own.
        return getattr(self.model, name)

    @_keywords_of(prompt_spec)
    def prompt(self, spec: PromptSpec) -> AsyncResponse:
        """Prepare an asynchronous response (the checks of :meth:`Model.prompt`, before any
        request); nothing is sent until it is awaited or iterated with ``async for``."""
        return prepare_async_response(self.model, spec)

    @_keywords_of(chain_spec)
    def chain(self, made: tuple[PromptSpec, ChainSettings]) -> AsyncChainResponse:
        """:meth:`Model.chain` for an event loop: ``await`` it or ``async for`` over it;
        a tool may be an ``async def`` function (a plain one runs on a worker thread)."""
        spec, settings = made
        return AsyncChainResponse(self.model, spec, settings)

    def conversation(self, conversation: Conversation | None = None) -> AsyncConversation:
        """A new conversation, or ``conversation`` (one :func:`llmcli.load_conversation`
        read from the log, say) continued asynchronously."""
        return AsyncConversation(self, conversation or Conversation(self.model))

    def __repr__(self) -> str:
        return f"<AsyncModel {self.model_id!r}>"


class AsyncConversation:
    """A :class:`~llmcli.response.Conversation` prompted through an :class:`AsyncModel`:
    each prompt carries the earlier turns (await each response before the next prompt)."""

    def __init__(self, model: AsyncModel, conversation: Conversation) -> None:
        self.model = model
        self.conversation = conversation

    @property
    def id(self) -> str:
        return self.conversation.id

    @property
    def responses(self) -> list[Any]:
        return self.conversation.responses

    def prompt(self, prompt: str, **kwargs: Any) -> AsyncResponse:
        return self.model.prompt(prompt, conversation=self.conversation, **kwargs)

    def chain(self, prompt: str, **kwargs: Any) -> AsyncChainResponse:
        return self.model.chain(prompt, conversation=self.conversation, **kwargs)


def concurrency_limit(model: Model) -> int | None:
    """How many requests to ``model`` may run at once in one process (None: no limit), as
    ``llmcli batch`` and ``llmcli serve`` both keep it.

    A plugin declares it with a ``batch_concurrency`` attribute (the local runtime's
    models declare 8, what its scheduler batches)."""
    declared = getattr(model, "batch_concurrency", None)
    if isinstance(declared, int) and declared >= 1:
        return declared
    return None

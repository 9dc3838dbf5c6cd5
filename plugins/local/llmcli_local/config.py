"""The local runtime's settings, in one place.

- **Allowed values**, declared once: every engine, KV cache kind, quantize scheme, device,
  draft and prefill mode is a ``Literal`` type here, with its tuple of values; ``-o``
  options (:mod:`llmcli_local.options`), the backends and the decode loop all use these.
- :class:`RuntimeConfig`: what runs a model (backend, device, weights, batching, caches),
  frozen, built **once per call** by :meth:`RuntimeConfig.build` from the environment and
  the call's options, then passed down explicitly: to the keep-alive client (its
  :meth:`~RuntimeConfig.digest` is part of the worker's key, and it is serialized in the
  worker's start-up spec, so a worker only ever serves calls that would have run the same
  in process), the loader (a loaded model is keyed by :meth:`~RuntimeConfig.loaded_key`),
  the lean backend (prefix cache, static batch, draft) and the scheduler (max batch,
  KV budget).
- :class:`GenerationSettings` (and its :class:`Grammar`): what a call asks of the decode
  loop, validated where it is built and again where a keep-alive worker reads it.

This module is the only one that reads an ``LLMCLI_LOCAL_*`` variable (a test scans the
source tree for any other). Cheap to import: no torch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from llmcli import config as core_config
from llmcli.errors import ConfigError

__all__ = [
    "DEVICES",
    "DRAFTS",
    "ENGINES",
    "KV_CACHES",
    "PREFILL_MODES",
    "QUANTIZE_SCHEMES",
    "VARIABLES",
    "BackendName",
    "Device",
    "DraftChoice",
    "Engine",
    "GenerationSettings",
    "Grammar",
    "KVCache",
    "PrefillMode",
    "Quantize",
    "RuntimeConfig",
    "cache_root",
    "default_keep_alive",
]

# -- allowed values -------------------------------------------------------------------------

#: ``-o engine`` (and ``LLMCLI_LOCAL_ENGINE``): "auto" lets ``choose_backend`` decide.
Engine = Literal["auto", "lean", "transformers"]
ENGINES: tuple[Engine, ...] = get_args(Engine)
#: A loaded backend's name (what "auto" resolves to).
BackendName = Literal["lean", "transformers"]
#: ``-o kv_cache``: grows as needed, or preallocated (the transformers backend).
KVCache = Literal["dynamic", "static"]
KV_CACHES: tuple[KVCache, ...] = get_args(KVCache)
#: ``-o quantize``: the lean backend's weight-only schemes.
Quantize = Literal["none", "int8", "int4"]
QUANTIZE_SCHEMES: tuple[Quantize, ...] = get_args(Quantize)
#: ``-o device``.
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[Device, ...] = get_args(Device)
#: ``LLMCLI_LOCAL_DRAFT``: speculative decoding's draft (:mod:`llmcli_local.lean.draft`).
DraftChoice = Literal["auto", "none", "int4", "int8", "lookup"]
DRAFTS: tuple[DraftChoice, ...] = get_args(DraftChoice)
#: ``-o prefill_mode``: how the prefill is split into tokens (:mod:`llmcli_local.decode`).
PrefillMode = Literal["chars", "heal", "none", "forced"]
PREFILL_MODES: tuple[PrefillMode, ...] = get_args(PrefillMode)
#: Old names of prefill modes, still accepted: ``exact`` was ``forced``'s until ``chars``.
OLD_PREFILL_MODES: dict[str, PrefillMode] = {"exact": "forced"}


def _new_mode_name(value: Any) -> Any:
    return OLD_PREFILL_MODES.get(value, value) if isinstance(value, str) else value


#: A prefill mode, its old names accepted (``-o prefill_mode`` and the settings alike).
PrefillModeField = Annotated[PrefillMode, BeforeValidator(_new_mode_name)]
#: Bounds of the sampling settings, shared by ``-o`` options and :class:`GenerationSettings`.
MaxTokens = Annotated[int, Field(ge=1, le=131072)]
Temperature = Annotated[float, Field(ge=0.0, le=5.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=0)]

# -- defaults and the variables -------------------------------------------------------------

#: How long a model stays loaded in its keep-alive worker after a call (Ollama's default).
DEFAULT_KEEP_ALIVE = "5m"
#: Sequences the scheduler steps together at most; also the static batch's slots.
DEFAULT_MAX_BATCH = 8
#: KV-cache positions the running sequences may hold together (SmolLM2-135M: 46 KB a
#: position in fp32, so about 380 MB).
DEFAULT_KV_BUDGET = 8192
#: Positions of finished calls kept for prompts that start the same (about 95 MB for SmolLM2).
DEFAULT_PREFIX_CACHE = 2048
#: Positions per slot of the static batch's KV pool (at most the model's context).
DEFAULT_STATIC_LENGTH = 4096

#: Every variable this module reads, and what it sets (docs/cli.md lists each one).
VARIABLES: dict[str, str] = {
    "LLMCLI_LOCAL_KEEP_ALIVE": "the default of -o keep_alive",
    "LLMCLI_LOCAL_ENGINE": "the default of -o engine",
    "LLMCLI_LOCAL_THREADS": "torch's CPU threads",
    "LLMCLI_LOCAL_CACHE": "the conversion cache directory",
    "LLMCLI_LOCAL_DRAFT": "speculative decoding's draft",
    "LLMCLI_LOCAL_MAX_BATCH": "sequences the scheduler steps together",
    "LLMCLI_LOCAL_KV_BUDGET": "KV positions the running sequences hold together",
    "LLMCLI_LOCAL_PREFIX_CACHE": "positions kept from finished calls",
    "LLMCLI_LOCAL_STATIC_BATCH": "the static batch (on, off, or on CUDA only)",
    "LLMCLI_LOCAL_STATIC_LENGTH": "positions per slot of the static batch",
}

_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def _get(environ: Mapping[str, str] | None, name: str) -> str:
    assert name in VARIABLES, name
    source = os.environ if environ is None else environ
    return source.get(name, "").strip()


def _positive(environ: Mapping[str, str] | None, name: str, default: int) -> int:
    """A positive whole number; ``default`` when unset or not a number."""
    value = _get(environ, name)
    try:
        return max(1, int(value)) if value else default
    except ValueError:
        return default


def default_keep_alive(environ: Mapping[str, str] | None = None) -> str:
    """``-o keep_alive``'s default: ``LLMCLI_LOCAL_KEEP_ALIVE``, else 5 minutes."""
    return _get(environ, "LLMCLI_LOCAL_KEEP_ALIVE") or DEFAULT_KEEP_ALIVE


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """Where converted weights live: ``LLMCLI_LOCAL_CACHE`` when set (tests share one across
    a run), else ``local/`` in llmcli's cache directory (``llmcli.config.cache_dir()``: the
    platform's, or ``LLMCLI_CACHE_PATH``), shared by every user directory."""
    value = _get(environ, "LLMCLI_LOCAL_CACHE")
    return Path(value) if value else core_config.cache_dir() / "local"


def _engine(environ: Mapping[str, str] | None) -> Engine:
    value = _get(environ, "LLMCLI_LOCAL_ENGINE").lower() or "auto"
    for engine in ENGINES:
        if value == engine:
            return engine
    raise ConfigError(f"Unknown local engine {value!r} (choose from: {', '.join(ENGINES)})")


def _draft(environ: Mapping[str, str] | None) -> DraftChoice:
    value = _get(environ, "LLMCLI_LOCAL_DRAFT").lower()
    if value in _OFF or value == "none":
        return "none"
    if value == "int4":
        return "int4"
    if value == "int8":
        return "int8"
    if value == "lookup":
        return "lookup"
    return "auto"


def _switch(environ: Mapping[str, str] | None, name: str) -> bool | None:
    value = _get(environ, name).lower()
    return True if value in _ON else False if value in _OFF else None


class BackendRequest(Protocol):
    """What :func:`~llmcli_local.backend.choose_backend` reads of a call's configuration
    (:class:`RuntimeConfig`, or a call's options)."""

    @property
    def engine(self) -> Engine: ...
    @property
    def kv_cache(self) -> KVCache: ...
    @property
    def cuda_graphs(self) -> bool: ...
    @property
    def quantize(self) -> Quantize: ...


class CallOptions(BackendRequest, Protocol):
    """What :meth:`RuntimeConfig.build` reads of a call's options (``LocalOptions``): the
    backend's choices, and the device."""

    @property
    def device(self) -> Device: ...


# -- the runtime's configuration ------------------------------------------------------------


class RuntimeConfig(BaseModel):
    """What runs a model: one frozen object per call, from the environment and the call's
    options (:meth:`build`), passed down to whatever it configures. Its fields' defaults
    are the runtime's defaults (``RuntimeConfig()`` reads no environment)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: ``-o device`` (``auto``: CUDA where there is a GPU).
    device: Device = "auto"
    #: ``-o engine``, else ``LLMCLI_LOCAL_ENGINE``.
    engine: Engine = "auto"
    #: ``-o kv_cache`` and ``-o cuda_graphs``: the transformers backend's cache, per call.
    kv_cache: KVCache = "dynamic"
    cuda_graphs: bool = False
    #: ``-o quantize``.
    quantize: Quantize = "none"
    #: ``LLMCLI_LOCAL_THREADS``: torch's CPU threads (None: torch's default).
    threads: int | None = Field(default=None, ge=1)
    #: ``LLMCLI_LOCAL_DRAFT``.
    draft: DraftChoice = "auto"
    #: ``LLMCLI_LOCAL_MAX_BATCH``: the scheduler's batch, the static batch's slots, and the
    #: calls ``llmcli batch`` and ``serve`` run at once.
    max_batch: int = Field(default=DEFAULT_MAX_BATCH, ge=1)
    #: ``LLMCLI_LOCAL_KV_BUDGET``.
    kv_budget: int = Field(default=DEFAULT_KV_BUDGET, ge=1)
    #: ``LLMCLI_LOCAL_PREFIX_CACHE`` (0: none kept).
    prefix_cache: int = Field(default=DEFAULT_PREFIX_CACHE, ge=0)
    #: ``LLMCLI_LOCAL_STATIC_BATCH``: True or False, or None: on CUDA only.
    static_batch: bool | None = None
    #: ``LLMCLI_LOCAL_STATIC_LENGTH``.
    static_length: int = Field(default=DEFAULT_STATIC_LENGTH, ge=1)
    #: ``LLMCLI_LOCAL_CACHE``: the conversion cache (None: ``local/`` in llmcli's cache
    #: directory, :func:`cache_root`).
    cache: str | None = None

    @classmethod
    def build(cls, options: CallOptions | None = None,
              environ: Mapping[str, str] | None = None) -> RuntimeConfig:
        """The configuration of a call: its options, and the ``LLMCLI_LOCAL_*`` variables
        of ``environ`` (the process's environment by default). An unknown engine in the
        environment is a :class:`~llmcli.errors.ConfigError`."""
        engine: Engine = "auto"
        backend: dict[str, Any] = {}
        if options is not None:
            backend = dict(device=options.device, kv_cache=options.kv_cache,
                           cuda_graphs=options.cuda_graphs, quantize=options.quantize)
            engine = options.engine
        env_engine = _engine(environ)
        if engine == "auto" and backend.get("kv_cache") != "static" \
                and not backend.get("cuda_graphs"):
            # The variable is -o engine's default; a cache option that only transformers
            # has picks the backend itself, as -o engine transformers would.
            engine = env_engine
        threads = _get(environ, "LLMCLI_LOCAL_THREADS")
        prefix = _get(environ, "LLMCLI_LOCAL_PREFIX_CACHE")
        return cls(
            **backend, engine=engine,
            threads=int(threads) if threads.isdigit() and int(threads) > 0 else None,
            draft=_draft(environ),
            max_batch=_positive(environ, "LLMCLI_LOCAL_MAX_BATCH", DEFAULT_MAX_BATCH),
            kv_budget=_positive(environ, "LLMCLI_LOCAL_KV_BUDGET", DEFAULT_KV_BUDGET),
            prefix_cache=int(prefix) if prefix.isdigit() else DEFAULT_PREFIX_CACHE,
            static_batch=_switch(environ, "LLMCLI_LOCAL_STATIC_BATCH"),
            static_length=_positive(environ, "LLMCLI_LOCAL_STATIC_LENGTH",
                                    DEFAULT_STATIC_LENGTH),
            cache=str(cache_root(environ)),
        )

    def replace(self, **changes: Any) -> RuntimeConfig:
        """A copy with ``changes``, validated."""
        return type(self).model_validate({**self.model_dump(), **changes})

    @property
    def cache_root(self) -> Path:
        """The conversion cache's directory."""
        return Path(self.cache) if self.cache else cache_root({})

    def static_batch_on(self, device: str) -> bool:
        """Whether a lean backend on ``device`` steps its batches through a static batch."""
        return device == "cuda" if self.static_batch is None else self.static_batch

    def static_positions(self, context_length: int | None) -> int:
        """Positions per slot of the static pool: ``static_length``, at most the context."""
        length = self.static_length
        return min(length, context_length) if context_length else length

    def digest(self) -> str:
        """A hash of every field: equal configurations, equal digests."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:20]

    def _resolved(self) -> dict[str, Any]:
        return {"cache": str(self.cache_root.resolve())}

    def for_worker(self, engine: Engine) -> RuntimeConfig:
        """What a keep-alive worker for this call serves: the engine as the call decides it
        (``choose_backend`` without the model directory), the cache resolved. The
        transformers backend's cache options are the call's own, sent with each request
        (one loaded model serves them all), so they are not part of it."""
        return self.replace(engine=engine, kv_cache="dynamic", cuda_graphs=False,
                            **self._resolved())

    def loaded_key(self) -> str:
        """What a loaded model depends on beyond its weights, device and backend (which the
        loader keys by itself): a change of any other setting loads it again."""
        return self.replace(device="auto", engine="auto", kv_cache="dynamic",
                            cuda_graphs=False, **self._resolved()).digest()


# -- what a call asks of the decode loop ----------------------------------------------------


class Grammar(BaseModel):
    """A constraint's grammar (:mod:`llmcli_local.grammar`): llguidance's grammar text,
    compiled where the model runs, and whether it is a JSON Schema's (then a reply the
    token budget would cut is closed as valid JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    json_schema: bool = False


class GenerationSettings(BaseModel):
    """What a call asks of the decode loop (the rest of ``LocalOptions`` makes the
    :class:`RuntimeConfig`). Validated when built, and again by a keep-alive worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: MaxTokens = 256
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    prefill_mode: PrefillModeField = "chars"
    #: Passed to the chat template (``enable_thinking``).
    template_kwargs: dict[str, Any] = Field(default_factory=dict)
    #: Constrained decoding (``--schema``, ``--grammar``), or None.
    grammar: Grammar | None = None
    #: Speculative decoding where the backend has a draft (:mod:`llmcli_local.lean.draft`)
    #: and the choice is greedy and free; False: one step per token.
    speculative: bool = True

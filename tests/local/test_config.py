"""The local runtime's settings in one place (:mod:`llmcli_local.config`): the only reader of
``LLMCLI_LOCAL_*`` variables, one frozen ``RuntimeConfig`` per call passed down (and hashed
where a worker or a loaded model is keyed by it), typed ``GenerationSettings`` validated on
both ends of the keep-alive socket, and the backends' capabilities as protocols."""

from __future__ import annotations

import ast
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from llmcli_local.config import (
    ENGINES,
    PREFILL_MODES,
    VARIABLES,
    GenerationSettings,
    Grammar,
    RuntimeConfig,
)
from pydantic import ValidationError

from llmcli.errors import ConfigError, ProviderError

ROOT = Path(__file__).resolve().parents[2]
#: Where llmcli's own code is (tests and benchmarks set variables for the code they run).
SOURCES = [ROOT / "llmcli", *sorted((ROOT / "plugins").glob("*/llmcli_*"))]
CONFIG = ROOT / "plugins" / "local" / "llmcli_local" / "config.py"
VARIABLE = re.compile(r"LLMCLI_LOCAL_[A-Z0-9_]*")


def environment_reads(source: str) -> list[int]:
    """Lines of ``source`` that read an ``LLMCLI_LOCAL_*`` variable: a statement that
    touches ``os.environ`` or ``getenv`` with such a name in it, or such a name held as a
    value of its own (to be looked up elsewhere)."""
    found: set[int] = set()
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings and VARIABLE.fullmatch(node.value):
            found.add(node.lineno)
        if not isinstance(node, ast.stmt) or isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.If
                | ast.With | ast.Try | ast.For | ast.While):
            continue
        names = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(node)
                 if isinstance(n, ast.Attribute | ast.Name)}
        if not names & {"environ", "getenv", "environb"}:
            continue
        texts = [n.value for n in ast.walk(node)
                 if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        if any("LLMCLI_LOCAL_" in text for text in texts):
            found.add(node.lineno)
    return sorted(found)


def test_the_scan_finds_every_way_of_reading_a_variable() -> None:
    offending = '''
import os
from os import environ, getenv
a = os.environ.get("LLMCLI_LOCAL_X", "")
b = os.getenv("LLMCLI_LOCAL_Y")
c = environ["LLMCLI_LOCAL_Z"]
d = "LLMCLI_LOCAL_W" in os.environ
e = getenv(f"LLMCLI_LOCAL_{a}")
NAME = "LLMCLI_LOCAL_V"
'''
    assert environment_reads(offending) == [4, 5, 6, 7, 8, 9]
    harmless = '''
"""Set LLMCLI_LOCAL_X to change it."""
import os
help = "one LLMCLI_LOCAL_X in a sentence"
home = os.environ.get("HOME")
'''
    assert environment_reads(harmless) == []


def test_only_the_config_module_reads_llmcli_local_variables() -> None:
    readers = {}
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            if path == CONFIG:
                continue
            lines = environment_reads(path.read_text())
            if lines:
                readers[str(path.relative_to(ROOT))] = lines
    assert readers == {}, "read LLMCLI_LOCAL_* variables through llmcli_local.config"
    assert environment_reads(CONFIG.read_text())  # the scan sees the reader itself


def test_every_variable_is_documented() -> None:
    docs = ROOT / "docs"
    table = (docs / "cli.md").read_text()
    local = (docs / "local.md").read_text()
    for name in VARIABLES:
        assert f"`{name}" in table or f", `{name}`" in table, f"{name} is not in docs/cli.md"
        assert name in local, f"{name} is not in docs/local.md"
    written = set(VARIABLE.findall(CONFIG.read_text())) - {"LLMCLI_LOCAL_"}
    assert written == set(VARIABLES)


# -- RuntimeConfig ------------------------------------------------------------------------


class Options:
    """A call's backend options, as ``LocalOptions`` has them."""

    def __init__(self, **given: Any) -> None:
        self.device = given.get("device", "auto")
        self.engine = given.get("engine", "auto")
        self.kv_cache = given.get("kv_cache", "dynamic")
        self.cuda_graphs = given.get("cuda_graphs", False)
        self.quantize = given.get("quantize", "none")


def test_the_config_is_built_from_the_environment_and_the_options() -> None:
    environ = {"LLMCLI_LOCAL_MAX_BATCH": "3", "LLMCLI_LOCAL_KV_BUDGET": "100",
               "LLMCLI_LOCAL_PREFIX_CACHE": "0", "LLMCLI_LOCAL_STATIC_BATCH": "on",
               "LLMCLI_LOCAL_STATIC_LENGTH": "64", "LLMCLI_LOCAL_THREADS": "2",
               "LLMCLI_LOCAL_DRAFT": "off", "LLMCLI_LOCAL_ENGINE": " Transformers ",
               "LLMCLI_LOCAL_CACHE": "/somewhere/else"}
    config = RuntimeConfig.build(Options(device="cpu", quantize="int8"), environ)
    assert config.model_dump() == {
        "device": "cpu", "engine": "transformers", "kv_cache": "dynamic",
        "cuda_graphs": False, "quantize": "int8", "threads": 2, "draft": "none",
        "max_batch": 3, "kv_budget": 100, "prefix_cache": 0, "static_batch": True,
        "static_length": 64, "cache": "/somewhere/else"}
    assert config.static_batch_on("cpu") and config.static_positions(32) == 32
    # -o engine beats the variable; a cache option only transformers has picks it too.
    assert RuntimeConfig.build(Options(engine="lean"), environ).engine == "lean"
    assert RuntimeConfig.build(Options(kv_cache="static"),
                               {"LLMCLI_LOCAL_ENGINE": "lean"}).engine == "auto"
    # Unset or unreadable: the defaults (RuntimeConfig() reads no environment at all).
    junk = {"LLMCLI_LOCAL_MAX_BATCH": "many", "LLMCLI_LOCAL_PREFIX_CACHE": "-5",
            "LLMCLI_LOCAL_STATIC_BATCH": "maybe", "LLMCLI_LOCAL_THREADS": "0",
            "LLMCLI_LOCAL_DRAFT": "int3"}
    defaults = RuntimeConfig.build(None, junk)
    assert defaults.replace(cache=None) == RuntimeConfig()
    assert defaults.cache_root == RuntimeConfig().cache_root
    assert not RuntimeConfig().static_batch_on("cpu") and RuntimeConfig().static_batch_on("cuda")
    with pytest.raises(ConfigError, match="Unknown local engine 'fastest'"):
        RuntimeConfig.build(None, {"LLMCLI_LOCAL_ENGINE": "fastest"})


def test_the_config_is_frozen_validated_and_hashed_by_every_field() -> None:
    config = RuntimeConfig()
    with pytest.raises(ValidationError):
        config.max_batch = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        RuntimeConfig(max_batch=0)
    with pytest.raises(ValidationError):
        RuntimeConfig.model_validate({"engine": "fastest"})
    with pytest.raises(ValidationError):
        RuntimeConfig.model_validate({"batch": 2})  # unknown fields are refused
    changes = {"device": "cpu", "engine": "lean", "kv_cache": "static", "cuda_graphs": True,
               "quantize": "int4", "threads": 1, "draft": "int8", "max_batch": 2,
               "kv_budget": 9, "prefix_cache": 0, "static_batch": False,
               "static_length": 8, "cache": "/x"}
    assert set(changes) == set(RuntimeConfig.model_fields)
    digests = {config.digest()} | {config.replace(**{k: v}).digest()
                                   for k, v in changes.items()}
    assert len(digests) == len(changes) + 1
    assert RuntimeConfig().digest() == config.digest()
    assert RuntimeConfig.model_validate_json(config.model_dump_json()) == config
    # A worker serves every call's cache options: they are not part of what it runs.
    static = config.replace(kv_cache="static", cuda_graphs=True)
    assert static.for_worker("transformers") == config.for_worker("transformers")
    assert config.for_worker("auto") != config.for_worker("lean")
    # A loaded model: the loader keys the device and backend itself, the rest is here.
    assert static.loaded_key() == config.replace(device="cpu").loaded_key()
    assert config.loaded_key() != config.replace(prefix_cache=0).loaded_key()


def test_allowed_values_are_declared_once() -> None:
    from llmcli_local import backend, decode, options

    assert backend.ENGINES is ENGINES == ("auto", "lean", "transformers")
    assert PREFILL_MODES == ("chars", "heal", "none", "forced")
    assert not hasattr(decode, "PREFILL_MODES") and not hasattr(backend, "BackendOptions")
    for mode in (*PREFILL_MODES, "exact"):
        expected = "forced" if mode == "exact" else mode
        assert options.LocalOptions(prefill_mode=mode).prefill_mode == expected
        assert GenerationSettings(prefill_mode=mode).prefill_mode == expected  # type: ignore[arg-type]
    # -o token_healing 0 is prefill_mode none, at the options layer only.
    assert options.LocalOptions(token_healing=False).prefill_mode == "none"
    assert "token_healing" not in GenerationSettings.model_fields


# -- GenerationSettings across the keep-alive socket --------------------------------------


def test_generation_settings_are_validated_and_round_trip() -> None:
    from llmcli_local.keepalive.protocol import PROTOCOL, GenerateRequest

    settings = GenerationSettings(max_tokens=9, stop=["\n"], seed=3, temperature=0.5,
                                  grammar=Grammar(text="{}", json_schema=True),
                                  template_kwargs={"enable_thinking": False})
    request = GenerateRequest(messages=[{"role": "user", "content": "Hi"}], prefill="[",
                              settings=settings, config=RuntimeConfig(kv_cache="static"),
                              keep_alive=60)
    message = json.loads(json.dumps(request.to_message()))
    assert message["op"] == "generate" and message["v"] == PROTOCOL
    assert message["settings"]["grammar"] == {"text": "{}", "json_schema": True}
    again = GenerateRequest.from_message(message)
    assert again == request and again.settings.stop == ("\n",)
    for bad in ({"max_tokens": 0}, {"top_p": 0}, {"prefill_mode": "words"},
                {"token_healing": False}, {"grammar": "root ::= x"}):
        name = next(iter(bad))
        with pytest.raises(ProviderError, match=f"refused the request: settings.{name}"):
            GenerateRequest.from_message({**message, "settings": {**message["settings"], **bad}})
        with pytest.raises(ValidationError):
            GenerationSettings.model_validate(bad)
    with pytest.raises(ProviderError, match="config.max_batch"):
        GenerateRequest.from_message({**message, "config": {"max_batch": "lots"}})
    with pytest.raises(ValidationError):
        settings.max_tokens = 10  # type: ignore[misc]


def test_the_worker_refuses_settings_it_cannot_validate(tiny: Any, tiny_model_dir: Path
                                                       ) -> None:
    from llmcli_local.keepalive.protocol import GenerateRequest, WorkerSpec, read_message
    from llmcli_local.keepalive.server import Worker

    spec = WorkerSpec(name="tiny", format="hf", path=str(tiny_model_dir), key="k",
                      keep_alive=1, config=RuntimeConfig(device="cpu"))
    assert WorkerSpec.from_json(spec.to_json()) == spec
    worker = Worker(spec, backend=tiny)
    message = GenerateRequest(messages=[{"role": "user", "content": "Hi"}], prefill="",
                              settings=GenerationSettings(max_tokens=2),
                              config=RuntimeConfig()).to_message()
    mine, theirs = socket.socketpair()
    with mine, theirs, mine.makefile("rb") as reader:
        worker.generate(theirs, {**message, "settings": {"max_tokens": -1}})
        reply = read_message(reader)
        assert reply == {"e": {"type": "ProviderError", "message": (
            "The local model's worker refused the request: settings.max_tokens: "
            "Input should be greater than or equal to 1")}}
        worker.generate(theirs, message)  # a valid one is served
        replies = [read_message(reader) for _ in range(4)]
    assert replies[-1] == {"end": True} and "u" in replies[-2]


# -- the configuration reaches what it configures -----------------------------------------


def test_a_loaded_model_and_its_scheduler_follow_the_config(tiny_model_dir: Path) -> None:
    from llmcli_local import loader, scheduler

    from tests.local.conftest import load

    loader.unload_all()
    try:
        first = load(tiny_model_dir, max_batch=3, kv_budget=500)
        assert load(tiny_model_dir, max_batch=3, kv_budget=500) is first
        shared = scheduler.shared(first, RuntimeConfig(max_batch=3, kv_budget=500))
        assert (shared.max_batch, shared.kv_budget) == (3, 500)
        assert first.prefixes is not None
        # Another setting is another loaded model (and scheduler), never the one loaded.
        other = load(tiny_model_dir, prefix_cache=0)
        assert other is not first and other.prefixes is None
        assert scheduler.shared(other) is not shared
    finally:
        loader.unload_all()


# -- the backends' capabilities -----------------------------------------------------------


def test_backend_capabilities_are_protocols(tiny: Any, tiny_hf: Any) -> None:
    from llmcli_local.backend import (
        BatchStep,
        Drafting,
        GraphedSingle,
        Releases,
        TreeBackend,
    )
    from llmcli_local.scheduler import Scheduler

    capabilities = (BatchStep, Releases, GraphedSingle, Drafting, TreeBackend)
    assert all(isinstance(tiny, capability) for capability in capabilities)
    assert not any(isinstance(tiny_hf, capability) for capability in capabilities)
    assert Scheduler(tiny).max_batch == 8 and Scheduler(tiny_hf).max_batch == 1
    assert tiny.loaded_model is tiny.decoder and tiny_hf.loaded_model is tiny_hf.model
    assert tiny.fast_tokenizer is not None and tiny_hf.fast_tokenizer is not None
    scores, _ = tiny_hf.prompt_scores([1, 2, 3], 8, keep=2)
    assert scores.all().shape == (2, len(tiny_hf.vocab))

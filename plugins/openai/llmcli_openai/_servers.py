"""User-configured OpenAI-compatible servers: ``openai-servers.json`` in the user directory,
and the ready-made presets.

The file::

    {
      "servers": [
        {"id": "qwen", "model_name": "qwen2.5:7b", "base_url": "http://localhost:11434/v1",
         "prefill_style": "trailing_assistant",
         "probe": {"at": "2026-11-26T23:50:00Z", "chosen": "trailing_assistant",
                   "styles": {"trailing_assistant": {"stream": "echoes", "complete": "echoes",
                                                     "seen": "Monday, ... Friday"}}}}
      ]
    }

``echoes`` (true or false, for every style) is the user's word on what the server returns
and wins over a probe; without it a probed server's recorded behaviour is used per stream
mode, and an unprobed one is "auto" (see :data:`._wire.EchoMode`).

Validated with pydantic (unknown fields are errors, so typos fail loudly); a malformed file
raises a one-line :class:`ConfigError` naming the file and the first problem.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmcli import config
from llmcli.errors import ConfigError

from ._wire import TOOL_CHOICES, EchoMode, PrefillStyle, SchemaField, ToolMode, takes_grammar

__all__ = [
    "FILE_NAME",
    "PRESETS",
    "ModeOutcome",
    "Preset",
    "ProbeRecord",
    "ServerEntry",
    "StyleProbe",
    "ToolOutcome",
    "ToolProbe",
    "default_tools",
    "ServersFile",
    "load_servers",
    "preset_echo",
    "save_servers",
    "servers_path",
]

FILE_NAME = "openai-servers.json"
# No "/" in ids: "<preset>/<model>" names are resolved on demand and must not collide.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"


#: What a probe saw a server do with one prefill style in one stream mode: return only the
#: continuation, return prefill + continuation, answer with a new turn that ignores the
#: prefill, or refuse the request (an HTTP error).
ModeOutcome = Literal["eats", "echoes", "ignores", "rejects"]


class StyleProbe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: ModeOutcome
    complete: ModeOutcome
    #: What came back, shortened (the start of each reply, or the server's error), so the
    #: user can check the verdict.
    seen: str = ""

    def works(self) -> bool:
        return self.stream in ("eats", "echoes") and self.complete in ("eats", "echoes")


#: What a probe saw a server do with its tools and one ``tool_choice``: parsed ``tool_calls``
#: came back (of the named tool, for a named choice), a call of another tool than the one
#: named (the name is ignored), a reply without calls, or an HTTP error (the server refuses
#: that choice).
ToolOutcome = Literal["calls", "ignores", "text", "rejects"]


class ToolProbe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Per ``tool_choice`` kind tried ("required", "named", "auto").
    choices: dict[str, ToolOutcome] = Field(default_factory=dict)
    #: The mode it picked (see :data:`._wire.ToolMode`).
    chosen: ToolMode
    #: What came back, shortened (the calls, the text, or the server's error).
    seen: str = ""

    def native_choices(self) -> tuple[str, ...]:
        """The kinds the server's own tool calling serves: those that came back as calls;
        "auto" also when it answered in text (a reply that needs no tool is one), and
        "none"."""
        served = [kind for kind in ("auto", "required", "named")
                  if self.choices.get(kind) == "calls"
                  or (kind == "auto" and self.choices.get(kind) == "text")]
        return (*served, "none")


def default_tools(schema_field: SchemaField | None) -> ToolMode:
    """Unprobed and undeclared: the grammar where the server takes one (it needs no server
    flag), else none."""
    return "grammar" if takes_grammar(schema_field) else "none"


class ProbeRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: When it ran (UTC, ISO 8601).
    at: str
    #: The style it picked ("none" when no native style worked).
    chosen: PrefillStyle
    styles: dict[PrefillStyle, StyleProbe] = Field(default_factory=dict)
    #: What the tool probe saw (absent: not probed for tools).
    tools: ToolProbe | None = None


class ServerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: The name used with -m.
    id: str = Field(pattern=ID_PATTERN)
    #: The model's name on the server.
    model_name: str = Field(min_length=1)
    base_url: str
    prefill_style: PrefillStyle
    #: The user's word: the server returns prefill + continuation (true) or only the
    #: continuation (false), streamed or not. None: the probe's record, else "auto".
    echoes: bool | None = None
    #: The key's name in 'llmcli keys'.
    key_name: str | None = None
    #: An environment variable holding the key (wins over the keys file).
    key_env: str | None = None
    aliases: list[str] = Field(default_factory=list)
    #: What ``openai-servers probe`` saw (absent when never probed).
    probe: ProbeRecord | None = None
    #: The request field for a JSON Schema (``--schema``); absent: asked for and validated.
    schema_field: SchemaField | None = None
    #: The model sees images: attachments go as ``image_url`` parts (``--images``).
    images: bool = False
    #: The user's word on tool calling (``--tools``); None: the probe's, else
    #: :func:`default_tools`.
    tools: ToolMode | None = None

    def tool_mode(self) -> ToolMode:
        if self.tools is not None:
            return self.tools
        if self.probe is not None and self.probe.tools is not None:
            return self.probe.tools.chosen
        return default_tools(self.schema_field)

    def native_choices(self) -> tuple[str, ...]:
        """The ``tool_choice`` kinds served natively: all when the user said native, else
        what the probe saw."""
        if self.tools is None and self.probe is not None and self.probe.tools is not None:
            return self.probe.tools.native_choices()
        return TOOL_CHOICES

    def echo(self, stream: bool) -> EchoMode:
        """What this server returns with a native prefill in one stream mode."""
        if self.echoes is not None:
            return "echoes" if self.echoes else "eats"
        seen = self.probe.styles.get(self.prefill_style) if self.probe else None
        if seen is not None:
            outcome = seen.stream if stream else seen.complete
            if outcome in ("eats", "echoes"):
                return outcome
        return "auto"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class ServersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    servers: list[ServerEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> ServersFile:
        seen: set[str] = set()
        for entry in self.servers:
            for name in (entry.id, *entry.aliases):
                if name in seen:
                    raise ValueError(f"the name {name!r} is used twice")
                seen.add(name)
        return self

    def get(self, server_id: str) -> ServerEntry | None:
        return next((s for s in self.servers if s.id == server_id), None)


@dataclass(frozen=True)
class Preset:
    base_url: str
    prefill_style: PrefillStyle
    #: None: "auto", as the servers differ by build (see :data:`._wire.EchoMode`).
    echoes: bool | None = None
    key_name: str | None = None
    key_env: str | None = None
    note: str = ""
    #: The request field for a JSON Schema (``--schema``); None: asked for and validated.
    schema_field: SchemaField | None = None

    @property
    def local(self) -> bool:
        """A server on this machine (localhost), not a hosted API."""
        from urllib.parse import urlsplit

        return urlsplit(self.base_url).hostname in ("localhost", "127.0.0.1", "::1")


PRESETS: dict[str, Preset] = {
    "vllm": Preset("http://localhost:8000/v1", "continue_final_message",
                   note="vLLM: continue_final_message + add_generation_prompt=false",
                   schema_field="structured_outputs"),
    "llama-server": Preset("http://localhost:8080/v1", "trailing_assistant",
                           note="llama.cpp llama-server: continues a trailing assistant turn",
                           schema_field="json_schema"),
    "ollama": Preset("http://localhost:11434/v1", "trailing_assistant",
                     note="Ollama: continues a trailing assistant turn (template-dependent)",
                     schema_field="response_format"),
    "deepseek": Preset("https://api.deepseek.com/beta", "prefix", key_name="deepseek",
                       key_env="DEEPSEEK_API_KEY",
                       note="DeepSeek: prefix=true, only on the /beta base URL"),
    "openrouter": Preset("https://openrouter.ai/api/v1", "none", key_name="openrouter",
                         key_env="OPENROUTER_API_KEY",
                         note="OpenRouter: echo or eat depends on the upstream model, so "
                              "emulated; use --prefill-style trailing_assistant per model"),
    # From their documentation and source, not measured here: echo is "auto" (detected
    # per reply), and 'openai-servers add --preset ...' probes the server before trusting
    # the style.
    "sglang": Preset("http://localhost:30000/v1", "continue_final_message",
                     note="SGLang: continue_final_message (documented; not measured "
                          "here, the probe decides)"),
    "lmdeploy": Preset("http://localhost:23333/v1", "trailing_assistant",
                       note="LMDeploy: continues a trailing assistant turn (from its "
                            "source; not measured here, the probe decides)"),
}


def preset_echo(preset: Preset) -> EchoMode:
    if preset.echoes is None:
        return "auto"
    return "echoes" if preset.echoes else "eats"


def servers_path() -> Path:
    return config.user_dir() / FILE_NAME


def _problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def load_servers(path: Path | None = None) -> ServersFile:
    path = path or servers_path()
    if not path.exists():
        return ServersFile()
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column "
                          f"{exc.colno}); fix or remove it") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        return ServersFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_problem(exc)}; fix or remove it") from None


def save_servers(servers: ServersFile, path: Path | None = None) -> Path:
    path = path or servers_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the user directory
    except OSError as exc:
        raise ConfigError(f"Cannot create {path.parent}: {exc.strerror}") from None
    data = servers.model_dump(exclude_defaults=True)
    data.setdefault("servers", [])
    # Write then rename: an interrupted write never leaves a half file behind.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".openai-servers.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def raw_mentions(name: str, path: Path | None = None) -> bool:
    """Whether a (possibly malformed) servers file mentions ``name`` as a JSON string."""
    path = path or servers_path()
    try:
        return json.dumps(name) in path.read_text(encoding="utf-8")
    except OSError:
        return False

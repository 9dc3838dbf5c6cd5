"""What the lean backend reads of a model directory's config files, and the one check of
whether it implements that model (:func:`why_not`). JSON only: no torch, no transformers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FAMILIES", "Family", "LeanConfig", "RopeConfig", "read_json", "rope_config",
           "unsupported", "why_not"]


@dataclass(frozen=True)
class Family:
    """What a llama-like family changes in the lean layer (:mod:`llmcli_local.lean.decoder`:
    one layer definition for every family). Each field is read from here into
    :class:`LeanConfig`, and from there by the weights' loader and the layer; RoPE (default
    or llama 3.1's scaling) and tied output heads are read from config.json for every
    family alike. Adding a family is one entry in :data:`FAMILIES` and a test against
    transformers (docs/architecture.md, "Adding a llama-like family")."""

    #: q, k and v always carry a bias (qwen2's ``self_attn.{q,k,v}_proj.bias``).
    qkv_bias: bool = False
    #: config.json's ``attention_bias`` gives q, k, v and o a bias (qwen3); where False, a
    #: config that sets it is refused (llama: untested here).
    attention_bias: bool = False
    #: q and k are RMS-normed over each head before RoPE (qwen3's ``self_attn.q_norm`` and
    #: ``k_norm``, one weight of ``head_dim`` each).
    qk_norm: bool = False
    #: ``sliding_window`` alone turns the window on (mistral); else it takes
    #: ``use_sliding_window`` too (qwen2, qwen3). A window is refused either way.
    window_always: bool = False


#: The families the lean backend runs (config.json's ``model_type``), and how each differs.
FAMILIES: dict[str, Family] = {
    "llama": Family(),
    "mistral": Family(window_always=True),
    "qwen2": Family(qkv_bias=True),
    "qwen3": Family(attention_bias=True, qk_norm=True),
}
#: Tokenizer classes whose transformers loader uses tokenizer.json as it is (checked: the
#: tests compare rendering and ids with transformers); others may rebuild it on load.
_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast", "GPT2Tokenizer",
                      "GPT2TokenizerFast"}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; empty when the file is missing or holds something else."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    #: "default" or "llama3" (then ``parameters`` holds llama 3.1's scaling keys).
    kind: str = "default"
    parameters: dict[str, Any] = field(default_factory=dict)


def rope_config(config: dict[str, Any]) -> RopeConfig | str:
    """RoPE from ``rope_parameters`` (transformers 5) or ``rope_theta`` and ``rope_scaling``
    (older files); a reason string when we do not implement it."""
    params = config.get("rope_parameters")
    if isinstance(params, dict):
        theta, kind = params.get("rope_theta"), params.get("rope_type", "default")
        extra = params
    else:
        scaling = config.get("rope_scaling") or {}
        theta = config.get("rope_theta")
        kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
        extra = scaling
    if kind == "llama3":
        if not all(isinstance(extra.get(k), int | float) for k in _LLAMA3_KEYS):
            return "incomplete llama3 rope parameters"
    elif kind != "default":
        return f"rope type {kind!r}"
    if float(extra.get("partial_rotary_factor", 1.0) or 1.0) != 1.0:
        return "partial rotary embeddings"
    if config.get("partial_rotary_factor", 1.0) not in (None, 1, 1.0):
        return "partial rotary embeddings"
    if not isinstance(theta, int | float):
        return "no rope_theta in config.json"
    return RopeConfig(float(theta), str(kind), dict(extra))


def unsupported(config: dict[str, Any]) -> str | None:
    """None when the lean forward pass implements the model ``config`` (a config.json)
    describes, else the reason it does not."""
    model_type = config.get("model_type")
    family = FAMILIES.get(str(model_type))
    if family is None:
        return f"architecture {model_type!r}"
    if config.get("quantization_config"):
        return "quantized weights"
    if config.get("hidden_act", "silu") != "silu" or config.get("mlp_bias"):
        return "activation or MLP bias"
    if any(t != "full_attention" for t in config.get("layer_types") or []):
        return "sliding-window layers"
    if config.get("sliding_window") and (
        family.window_always or config.get("use_sliding_window")
    ):
        return "sliding-window attention"
    if config.get("attention_bias") and not family.attention_bias:
        return "attention bias"
    rope = rope_config(config)
    return rope if isinstance(rope, str) else None


def chat_template(directory: Path, tokenizer_config: dict[str, Any]) -> Any:
    """``chat_template.jinja`` if there is one, else tokenizer_config.json's entry (a string,
    or a list of named templates, which we leave to transformers)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return tokenizer_config.get("chat_template")


def why_not(directory: Path) -> str | None:
    """None when the lean backend can run the model in ``directory``, else the reason it
    cannot (an architecture or config feature not implemented here, a tokenizer class that
    transformers rebuilds on load, ...): that model then runs on transformers."""
    reason = unsupported(read_json(directory / "config.json"))
    if reason is not None:
        return reason
    if not any(directory.glob("*.safetensors")):
        return "no safetensors weights"
    if not (directory / "tokenizer.json").is_file():
        return "no tokenizer.json"
    tokenizer_config = read_json(directory / "tokenizer_config.json")
    if tokenizer_config.get("tokenizer_class") not in _TOKENIZER_CLASSES:
        return f"tokenizer class {tokenizer_config.get('tokenizer_class')!r}"
    if not isinstance(chat_template(directory, tokenizer_config), str):
        return "no single chat template"
    return None


@dataclass(frozen=True)
class LeanConfig:
    """The model's shape, as the weights loader and the decoder need it."""

    model_type: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    rope: RopeConfig
    #: q, k and v carry a bias (:attr:`Family.qkv_bias`, or ``attention_bias``).
    qkv_bias: bool
    #: The output projection carries a bias (``attention_bias`` where the family reads it).
    out_bias: bool
    #: q and k are RMS-normed per head before RoPE (:attr:`Family.qk_norm`).
    qk_norm: bool
    max_position_embeddings: int | None
    #: End-of-turn ids as config.json and generation_config.json declare them.
    eos_token_ids: tuple[Any, ...]

    @classmethod
    def read(cls, directory: Path) -> LeanConfig:
        config = read_json(directory / "config.json")
        rope = rope_config(config)
        if isinstance(rope, str):
            raise ValueError(f"the lean backend cannot run this model: {rope}")
        heads = int(config["num_attention_heads"])
        generation = read_json(directory / "generation_config.json")
        family = FAMILIES[str(config["model_type"])]
        biased = family.attention_bias and bool(config.get("attention_bias"))
        return cls(
            model_type=str(config["model_type"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope=rope,
            qkv_bias=family.qkv_bias or biased,
            out_bias=biased,
            qk_norm=family.qk_norm,
            max_position_embeddings=config.get("max_position_embeddings"),
            eos_token_ids=(generation.get("eos_token_id"), config.get("eos_token_id")),
        )

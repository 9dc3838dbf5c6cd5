"""The lean path: llama-family models (llama, mistral, qwen2) on CPU without transformers.

Importing transformers costs more than a second (its modeling code pulls in much of
``torch.distributed``), and building its model and tokenizer objects another; for a small
model that is most of a short run. Here the model is plain tensors read with safetensors
and run by :class:`llmcli_local.fastpath.FastDecoder` (one causal pass for the prompt, then
the lean decode step), and the tokenizer is the ``tokenizers`` library's own, with the chat
template rendered by jinja2 exactly as transformers renders it.

:func:`why_not` says why a model directory cannot take this path (an architecture or
config feature not implemented here, a tokenizer class that transformers rebuilds on
load...); the loader then uses transformers. Nothing here imports transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = ["LeanModel", "LeanTokenizer", "load_model", "load_tokenizer", "why_not"]

_FAMILIES = {"llama", "mistral", "qwen2"}
#: Tokenizer classes whose transformers loader uses tokenizer.json as it is (checked: the
#: tests compare rendering and ids with transformers); others may rebuild it on load.
_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast", "GPT2Tokenizer",
                      "GPT2TokenizerFast"}
_SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")


def _rope(config: dict[str, Any]) -> tuple[float, dict[str, Any]] | str:
    """(theta, parameters) from ``rope_parameters`` (transformers 5) or ``rope_theta`` and
    ``rope_scaling`` (older files); a reason string when we do not implement it."""
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
    return float(theta), {**extra, "rope_type": kind}


def _inv_freq(theta: float, rope: dict[str, Any], head_dim: int) -> Any:
    """RoPE inverse frequencies as transformers computes them (default, or llama 3.1's
    ``_compute_llama3_parameters``)."""
    import math

    import torch

    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(
        dtype=torch.float) / head_dim))
    if rope["rope_type"] != "llama3":
        return inv_freq
    factor = rope["factor"]
    low_freq_factor = rope["low_freq_factor"]
    high_freq_factor = rope["high_freq_factor"]
    old_context_len = rope["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (
        high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed, inv_freq_llama)


def why_not(directory: Path) -> str | None:
    """None when ``directory`` can run on the lean path, else the reason it cannot."""
    config = _read_json(directory / "config.json")
    model_type = config.get("model_type")
    if model_type not in _FAMILIES:
        return f"architecture {model_type!r}"
    if config.get("quantization_config"):
        return "quantized weights"
    if config.get("hidden_act", "silu") != "silu" or config.get("mlp_bias"):
        return "activation or MLP bias"
    if any(t != "full_attention" for t in config.get("layer_types") or []):
        return "sliding-window layers"
    if config.get("sliding_window") and (
        model_type == "mistral" or config.get("use_sliding_window")
    ):
        return "sliding-window attention"
    if model_type == "llama" and config.get("attention_bias"):
        return "attention bias"
    rope = _rope(config)
    if isinstance(rope, str):
        return rope
    if not any(directory.glob("*.safetensors")):
        return "no safetensors weights"
    if not (directory / "tokenizer.json").is_file():
        return "no tokenizer.json"
    tokenizer_config = _read_json(directory / "tokenizer_config.json")
    if tokenizer_config.get("tokenizer_class") not in _TOKENIZER_CLASSES:
        return f"tokenizer class {tokenizer_config.get('tokenizer_class')!r}"
    if not isinstance(_chat_template(directory, tokenizer_config), str):
        return "no single chat template"
    return None


# -- the model ------------------------------------------------------------------------------


@dataclass
class LeanModel:
    """What the engine and loader read of a model, named as on a transformers model:
    ``config`` (``model_type``, ``max_position_embeddings``, ``eos_token_id``),
    ``generation_config`` (``eos_token_id``), and the lean decoder over its weights."""

    config: Any
    generation_config: Any
    decoder: Any


def _state_dict(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    index = _read_json(directory / "model.safetensors.index.json")
    files = sorted(set(index.get("weight_map", {}).values())) if index else []
    paths = [directory / f for f in files] or sorted(directory.glob("*.safetensors"))
    state: dict[str, Any] = {}
    for path in paths:
        state.update(load_file(str(path)))
    return state


def load_model(directory: Path, dtype: Any, device: str) -> LeanModel:
    from llmcli_local.fastpath import FastDecoder, Layer, Rotary

    config = _read_json(directory / "config.json")
    rope = _rope(config)
    assert not isinstance(rope, str), rope
    theta, rope_parameters = rope
    state = _state_dict(directory)

    def weight(name: str, required: bool = True) -> Any:
        tensor = state.get(name)
        if tensor is None:
            if required:
                raise KeyError(f"{name} is missing from the weights")
            return None
        return tensor.to(device=device, dtype=dtype)

    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    eps = float(config.get("rms_norm_eps", 1e-6))
    embed = weight("model.embed_tokens.weight")
    tied = config.get("tie_word_embeddings", False)
    lm_head = embed if tied else weight("lm_head.weight")
    layers = []
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}."
        layers.append(Layer(
            norm_in=weight(p + "input_layernorm.weight"),
            norm_post=weight(p + "post_attention_layernorm.weight"),
            eps_in=eps, eps_post=eps,
            q=weight(p + "self_attn.q_proj.weight"), k=weight(p + "self_attn.k_proj.weight"),
            v=weight(p + "self_attn.v_proj.weight"),
            q_bias=weight(p + "self_attn.q_proj.bias", False),
            k_bias=weight(p + "self_attn.k_proj.bias", False),
            v_bias=weight(p + "self_attn.v_proj.bias", False),
            out=weight(p + "self_attn.o_proj.weight"),
            out_bias=weight(p + "self_attn.o_proj.bias", False),
            gate=weight(p + "mlp.gate_proj.weight"), up=weight(p + "mlp.up_proj.weight"),
            down=weight(p + "mlp.down_proj.weight"),
            scaling=head_dim ** -0.5,
        ))
    inv_freq = _inv_freq(theta, rope_parameters, head_dim)
    decoder = FastDecoder.from_parts(
        heads=heads, kv_heads=kv_heads, head_dim=head_dim, embed=embed,
        norm=weight("model.norm.weight"), norm_eps=eps, rotary=Rotary(inv_freq.to(device)),
        lm_head=lm_head, layers=layers,
    )
    generation = _read_json(directory / "generation_config.json")
    return LeanModel(
        config=SimpleNamespace(
            model_type=config["model_type"],
            max_position_embeddings=config.get("max_position_embeddings"),
            eos_token_id=config.get("eos_token_id"),
        ),
        generation_config=SimpleNamespace(eos_token_id=generation.get("eos_token_id")),
        decoder=decoder,
    )


# -- the tokenizer --------------------------------------------------------------------------


def _chat_template(directory: Path, tokenizer_config: dict[str, Any]) -> Any:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return tokenizer_config.get("chat_template")


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    """The template compiled as transformers compiles it (``_compile_jinja_template``): a
    sandboxed, immutable environment with trim_blocks, lstrip_blocks and loop controls, its
    own ``tojson`` (no HTML escaping), ``raise_exception``, ``strftime_now``, and the
    restricted ``dict`` and ``namespace``."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class TemplateDict:
        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    "Chat templates cannot store underscore-prefixed attributes on a "
                    f"namespace, but got {name!r}.")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(template)


class LeanTokenizer:
    """The part of a transformers fast tokenizer that the engine, healing and tests use,
    over ``tokenizers.Tokenizer`` and ``tokenizer_config.json``."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config = _read_json(directory / "tokenizer_config.json")
        self.chat_template: str = _chat_template(directory, config)
        self.added_tokens_decoder: dict[int, Any] = dict(
            self.backend_tokenizer.get_added_tokens_decoder()
        )
        self.special_tokens_map: dict[str, str] = {}
        for name in _SPECIAL_ATTRIBUTES:
            text = _token_text(config.get(name))
            if text is not None:
                self.special_tokens_map[name] = text
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens")
        extra_texts = [t for t in (_token_text(e) for e in (
            extra.values() if isinstance(extra, dict) else extra or ())) if t is not None]
        names = list(dict.fromkeys([*self.special_tokens_map.values(), *extra_texts]))
        self.all_special_tokens = names
        self.all_special_ids = [i for i in (self.convert_tokens_to_ids(n) for n in names)
                                if i is not None]
        eos = self.special_tokens_map.get("eos_token")
        self.eos_token_id = self.convert_tokens_to_ids(eos) if eos is not None else None

    def __len__(self) -> int:
        return int(self.backend_tokenizer.get_vocab_size(with_added_tokens=True))

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        encoding = self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": list(encoding.ids)}

    def get_vocab(self) -> dict[str, int]:
        return dict(self.backend_tokenizer.get_vocab(with_added_tokens=True))

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        backend = self.backend_tokenizer
        return [backend.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, token: str) -> int | None:
        found = self.backend_tokenizer.token_to_id(token)
        return None if found is None else int(found)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return str(self.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    def apply_chat_template(self, messages: list[dict[str, Any]], tokenize: bool = False,
                            add_generation_prompt: bool = False, **kwargs: Any) -> str:
        """As transformers' ``apply_chat_template(..., tokenize=False)`` for one
        conversation of plain string messages, without tools or documents."""
        if tokenize:
            raise ValueError("the lean tokenizer renders text only (tokenize=False)")
        if not messages:
            raise ValueError(
                "Cannot apply chat template to an empty conversation. Provide at least one "
                "message.")
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        template_kwargs = {**self.special_tokens_map, **kwargs}
        return str(_compile(self.chat_template).render(
            messages=chat, tools=None, documents=None,
            add_generation_prompt=add_generation_prompt, **template_kwargs,
        ))


def load_tokenizer(directory: Path) -> LeanTokenizer:
    return LeanTokenizer(directory)

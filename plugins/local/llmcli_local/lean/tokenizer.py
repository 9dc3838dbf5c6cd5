"""The lean backend's tokenizer: ``tokenizers``' own over ``tokenizer.json``, special tokens
from ``tokenizer_config.json``, and the chat template rendered with jinja2 exactly as
transformers renders it. It answers the part of a transformers fast tokenizer's interface
that llmcli uses (the tests compare both), so that the token-bytes table is built one way."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmcli_local.lean.config import chat_template, read_json

__all__ = ["LeanTokenizer"]

_SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")


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
    """The part of a transformers fast tokenizer that the lean backend, healing and tests use,
    over ``tokenizers.Tokenizer`` and ``tokenizer_config.json``."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config = read_json(directory / "tokenizer_config.json")
        self.chat_template: str = chat_template(directory, config)
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
        conversation of plain string messages (and ``tools=``, the OpenAI function shape,
        for a template with a tools section), without documents."""
        if tokenize:
            raise ValueError("the lean tokenizer renders text only (tokenize=False)")
        if not messages:
            raise ValueError(
                "Cannot apply chat template to an empty conversation. Provide at least one "
                "message.")
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        tools = kwargs.pop("tools", None)
        template_kwargs = {**self.special_tokens_map, **kwargs}
        return str(_compile(self.chat_template).render(
            messages=chat, tools=tools, documents=None,
            add_generation_prompt=add_generation_prompt, **template_kwargs,
        ))


"""Thinking models on the local runtime (#28): which chat templates think, the ``<think>``
block split out of a reply, and the prefill text that places a prefill after the thinking
(``after``) or after an empty, closed thinking block (``skip``).

Pure Python (jinja only, to render a template once): no torch, so :mod:`llmcli_local.model`
decides a call's plan before anything loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmcli.models import Reasoning

__all__ = ["CLOSE", "OPEN", "ThinkSplitter", "ThinkingTemplate", "after_prefill",
           "skip_prefill", "template_of"]

OPEN = "<think>"
CLOSE = "</think>"
#: What follows the closing tag before the answer in Qwen3's and DeepSeek-R1's templates
#: (Qwen3's ``enable_thinking=False`` renders ``<think>\n\n</think>\n\n``).
AFTER_CLOSE = "\n\n"


@dataclass(frozen=True)
class ThinkingTemplate:
    """What a chat template does with thinking."""

    #: The template knows ``<think>`` (Qwen3, QwQ, DeepSeek-R1 distills): the model thinks
    #: in a ``<think>`` block at the start of its turn.
    thinks: bool
    #: Its generation prompt already opens the block (DeepSeek-R1 style ``<think>\n``): the
    #: reply starts inside the thinking.
    opens: bool = False

    @property
    def opening(self) -> str:
        """The text that opens the block where the generation prompt has not."""
        return "" if self.opens else OPEN + "\n"


def template_of(directory: Path, template_kwargs: dict[str, Any] | None = None
                ) -> ThinkingTemplate | None:
    """The thinking of the chat template in a Hugging Face directory (None: no template
    there, as for a GGUF file, whose template is read only when it is converted)."""
    config_file = directory / "tokenizer_config.json"
    jinja = directory / "chat_template.jinja"
    if not directory.is_dir() or not (jinja.is_file() or config_file.is_file()):
        return None
    stamp = tuple(p.stat().st_mtime_ns if p.is_file() else 0 for p in (jinja, config_file))
    kwargs = tuple(sorted((template_kwargs or {}).items()))
    return _template_of(str(directory), stamp, kwargs)


@lru_cache(maxsize=32)
def _template_of(directory: str, stamp: tuple[int, ...], kwargs: tuple[Any, ...]
                 ) -> ThinkingTemplate | None:
    from llmcli_local.lean.config import chat_template, read_json

    path = Path(directory)
    config_file = path / "tokenizer_config.json"
    tokenizer_config = read_json(config_file) if config_file.is_file() else {}
    template = chat_template(path, tokenizer_config)
    if not isinstance(template, str) or OPEN not in template:
        return ThinkingTemplate(thinks=False)
    return ThinkingTemplate(thinks=True, opens=_opens(template, tokenizer_config, dict(kwargs)))


def _opens(template: str, tokenizer_config: dict[str, Any], kwargs: dict[str, Any]) -> bool:
    """Whether the generation prompt ends inside an open ``<think>`` block."""
    from llmcli_local.lean.tokenizer import _compile

    tokens = {name: value for name in ("bos_token", "eos_token")
              if isinstance(value := tokenizer_config.get(name), str)}
    try:
        rendered = str(_compile(template).render(
            messages=[{"role": "user", "content": "x"}], add_generation_prompt=True,
            tools=None, documents=None, **{**tokens, **kwargs}))
    except Exception:  # a template that needs more than this to render: it does not open
        return False
    tail = rendered.rstrip()
    return tail.endswith(OPEN)


def after_prefill(template: ThinkingTemplate, thinking: str, prefill: str) -> str:
    """The assistant text a prefill is continued from under ``after``: the thinking as the
    model wrote it, closed (by us where the model had not: a budget reached), then the
    prefill."""
    separator = "" if thinking.endswith("\n") else "\n"
    return f"{template.opening}{thinking}{separator}{CLOSE}{AFTER_CLOSE}{prefill}"


def skip_prefill(template: ThinkingTemplate, prefill: str) -> str:
    """``skip``: an empty, closed thinking block, then the prefill (Qwen3's documented
    no-think, exactly what its template renders with ``enable_thinking=False``)."""
    return f"{template.opening}\n{CLOSE}{AFTER_CLOSE}{prefill}"


class ThinkSplitter:
    """Splits a streamed reply into its ``<think>`` block (as :class:`Reasoning`) and the
    answer (str). The block is recognised at the start of the reply only, or is already
    open (``opened``: the prompt opened it). Tags split across chunks are held back until
    they are whole; the blank lines around the block are not part of either."""

    def __init__(self, opened: bool = False) -> None:
        self._state = "thinking" if opened else "start"
        self._held = ""
        self._fresh = True  # at the start of a part: leading newlines are dropped

    def feed(self, text: str) -> Iterator[str | Reasoning]:
        self._held += text
        while self._held:
            if self._state == "start":
                stripped = self._held.lstrip()
                if stripped.startswith(OPEN):
                    self._held = stripped[len(OPEN):]
                    self._state, self._fresh = "thinking", True
                    continue
                if OPEN.startswith(stripped):
                    return  # maybe the tag, not whole yet
                self._state = "answer"
                continue
            if self._state == "thinking":
                at = self._held.find(CLOSE)
                if at >= 0:
                    yield from self._reasoning(self._held[:at].rstrip("\n"))
                    self._held = self._held[at + len(CLOSE):]
                    self._state, self._fresh = "answer", True
                    continue
                # Held back: what may begin the closing tag, and the newlines before it.
                cut = len(self._held) - _partial_tail(self._held, CLOSE)
                while cut > 0 and self._held[cut - 1] == "\n":
                    cut -= 1
                piece, self._held = self._held[:cut], self._held[cut:]
                yield from self._reasoning(piece)
                return
            # the answer
            if self._fresh:
                self._held = self._held.lstrip("\n")
                if not self._held:
                    return
                self._fresh = False
            piece, self._held = self._held, ""
            yield piece

    def finish(self) -> Iterator[str | Reasoning]:
        """What is held at the end: a reply that never closed its thinking (cut short by
        its budget) is all reasoning; an unfinished tag at the start is text."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            yield from self._reasoning(held.rstrip("\n"))
        elif self._state == "start":
            if held:
                yield held
        elif held.lstrip("\n") if self._fresh else held:
            yield held.lstrip("\n") if self._fresh else held

    def _reasoning(self, text: str) -> Iterator[Reasoning]:
        if self._fresh:
            text = text.lstrip("\n")
        if text:
            self._fresh = False
            yield Reasoning(text)


def _partial_tail(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could begin ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0

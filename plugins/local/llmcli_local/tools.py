"""Tools on local models: the prompt that offers them, the grammar that makes every call
valid, and the reply read back as text or a call.

A model whose chat template has a tools section is given the tools through it (``tools=``,
the OpenAI function shape transformers' templates take) and its earlier calls and results as
the template expects them (``tool_calls`` on the assistant turn, ``role: tool`` turns). A
model without one (SmolLM2) gets them in the system prompt, in the same Hermes format most
tool-trained templates use. Either way the reply is constrained by one grammar: **text, or
``<tool_call>{"name": N, "arguments": A}</tool_call>`` where N is one of the tools and A
matches that tool's JSON Schema** (llguidance's Lark with a ``%json`` rule per tool), so
even a 135M model's calls always parse and validate.

The system text, the text turns, the grammar's Lark and :func:`read_reply` are
:mod:`llmcli.tooltext`'s (OpenAI-compatible servers without a tool parser use them too);
the grammar is compiled here and handed to the decode loop as any ``--schema`` grammar is
(:class:`~llmcli_local.config.Grammar`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmcli.models import Message, Request, Tool
from llmcli.tooltext import CLOSE, OPEN, lark, read_reply, system_text, text_turns
from llmcli_local.config import Grammar

__all__ = ["OPEN", "CLOSE", "grammar", "messages", "read_reply", "system_text"]


def grammar(tools: Sequence[Tool], choice: str = "auto") -> Grammar | None:
    """Text (not starting with ``<``), or one call of one of ``tools`` with arguments that
    match its schema; ``choice`` "required" leaves only the calls, a tool's name only its
    call, "none" no constraint (None)."""
    import llguidance

    text = lark(tools, choice)
    if text is None:
        return None
    return Grammar(text=str(llguidance.LLMatcher.grammar_from_lark(text)))


def messages(request: Request, template: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The chat messages and template arguments for a request with tools: through the
    template's tools section where it has one, else in the system prompt and as text."""
    native = "tools" in template and "tool_calls" in template
    out: list[dict[str, Any]] = []
    system = request.system or ""
    if not native:
        system = f"{system}\n\n{system_text(request.tools)}".strip()
    if system:
        out.append({"role": "system", "content": system})
    for message in request.messages():
        out.extend(_turn(message) if native else text_turns(message))
    kwargs: dict[str, Any] = {"tools": [t.as_function() for t in request.tools]} if native else {}
    return out, kwargs


def _turn(message: Message) -> list[dict[str, Any]]:
    """A turn as a template's tools section takes it."""
    if message.role == "assistant" and message.tool_calls:
        return [{"role": "assistant", "content": message.content, "tool_calls": [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls]}]
    if message.role == "user" and message.tool_results:
        turns: list[dict[str, Any]] = [
            {"role": "tool", "tool_call_id": r.call_id, "name": r.name, "content": r.output}
            for r in message.tool_results]
        return turns + ([{"role": "user", "content": message.content}]
                        if message.content else [])
    return [{"role": message.role, "content": message.content}]

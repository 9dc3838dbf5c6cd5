"""Constrained decoding for the local runtime, on llguidance.

A :class:`Constraint` follows one sequence: llguidance's matcher over the model's token
bytes, fed the prefill first, then every generated token. At each step it masks the logits
(:meth:`Constraint.apply`, one bitmask per step, computed in Rust), and where the grammar
leaves only one way on (fixed keys, punctuation) it names the forced tokens
(:meth:`Constraint.forced`), which the decode loop runs in one pass instead of one step each.

Grammars: a JSON Schema (:func:`from_schema`), a Lark grammar, or a GBNF one (llama.cpp's
format; :func:`from_text` tells them apart), each a :class:`~llmcli_local.config.Grammar`:
llguidance's grammar text, and whether it is a JSON Schema's (the constraint then closes a
reply the token budget would cut). That is what crosses to a keep-alive worker, in the
call's :class:`~llmcli_local.config.GenerationSettings`; it is compiled again there.

Imported when a call has a schema or a grammar (llguidance); torch only where a model runs,
so a keep-alive client turns a schema into grammar text without it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import llguidance

from llmcli.errors import ConfigError
from llmcli.schema import closed
from llmcli_local.config import Grammar

if TYPE_CHECKING:
    import torch

    from llmcli_local.healing import Vocab

__all__ = ["Constraint", "Grammar", "closed", "from_schema", "from_text", "tokenizer_for"]

#: JSON the way models write it inline: ``{"a": 1, "b": [2, 3]}``. Without free whitespace
#: the keys, colons and commas are forced (and run in one pass); a prefill must use the same
#: separators.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ",
                                "key_separator": ": "}


def from_schema(schema: dict[str, Any]) -> Grammar:
    """llguidance's grammar for a JSON Schema, objects closed (:func:`llmcli.schema.closed`:
    a small model given the choice keeps inventing keys)."""
    return Grammar(text=str(llguidance.LLMatcher.grammar_from_json_schema(
        closed(schema), defaults=JSON_OPTIONS)), json_schema=True)  # type: ignore[arg-type]


def from_text(text: str) -> Grammar:
    """A grammar file's text: Lark (llguidance's own dialect) or GBNF (``root ::= ...``)."""
    from llguidance.gbnf_to_lark import any_to_lark

    try:
        lark = any_to_lark(text)
    except Exception as exc:  # the converter raises plain exceptions on bad GBNF
        raise ConfigError(f"Invalid grammar: {exc}") from None
    return Grammar(text=str(llguidance.LLMatcher.grammar_from_lark(lark)))


class _Wrapped:
    """What ``llguidance.TokenizerWrapper`` reads: every id's bytes, and an encoder."""

    def __init__(self, vocab: Vocab, eos: int, encode: Any) -> None:
        # Special tokens have no bytes here; llguidance wants some: their id, unreachable.
        self.tokens = [b if b is not None else f"<|special_{i}|>".encode()
                       for i, b in enumerate(vocab.token_bytes)]
        self.special_token_ids = [i for i, b in enumerate(vocab.token_bytes) if b is None]
        self.eos_token_id = eos
        self.bos_token_id = None
        self._encode = encode

    def __call__(self, text: str) -> list[int]:
        return list(self._encode(text))


_TOKENIZERS: weakref.WeakKeyDictionary[Vocab, llguidance.LLTokenizer] = (
    weakref.WeakKeyDictionary())


def tokenizer_for(vocab: Vocab, eos_ids: frozenset[int], encode: Any) -> llguidance.LLTokenizer:
    """llguidance's tokenizer over a loaded model's vocabulary (built once per model)."""
    cached = _TOKENIZERS.get(vocab)
    if cached is None:
        eos = sorted(eos_ids)
        if not eos:
            raise ConfigError("Constrained decoding needs a model with an end-of-turn token")
        wrapped = llguidance.TokenizerWrapper(_Wrapped(vocab, eos[0], encode))
        cached = llguidance.LLTokenizer(wrapped, n_vocab=len(vocab), eos_token=eos)
        _TOKENIZERS[vocab] = cached
    return cached


#: Close a JSON reply once the budget left is within this many tokens of what closing
#: takes: a token may open more than it closes (``, "`` or ``[{"``).
CLOSING_MARGIN = 3
#: How near the end of the budget the runtime starts asking what closing would take.
CLOSING_LOOKOUT = 48


class JsonCloser:
    """Follows JSON text byte by byte and says the shortest bytes that end it as a whole
    value: close an open string (finishing an escape), finish a number, give a value
    where one is due, close every open array and object. Under ``--schema`` the runtime
    writes them when the token budget left is what closing needs, so that a reply cut by
    ``max_tokens`` is still valid JSON (where the schema takes the closing)."""

    def __init__(self) -> None:
        #: Open containers: ``[`` or ``{``.
        self.stack: list[str] = []
        self.in_string = False
        self.escape = 0  # 1 after a backslash; 2..5 inside a \uXXXX
        #: Inside an object: "key" before a key, "colon" after one, "value" after the colon.
        self.expect = "value"
        self.number = b""
        self.literal = b""

    def feed(self, data: bytes) -> None:
        for byte in data:
            self._byte(bytes([byte]))

    def _byte(self, ch: bytes) -> None:
        if self.in_string:
            if self.escape == 1:
                self.escape = 2 if ch == b"u" else 0
            elif self.escape >= 2:
                self.escape = self.escape + 1 if self.escape < 5 else 0
            elif ch == b"\\":
                self.escape = 1
            elif ch == b'"':
                self.in_string = False
                self._value_done(key=self.expect == "key")
            return
        if self.number and ch in b"0123456789.eE+-":
            self.number += ch
            return
        if self.literal and ch.isalpha():
            self.literal += ch
            return
        self.number = self.literal = b""
        if ch in b" \t\r\n":
            return
        if ch == b'"':
            self.in_string = True
        elif ch in b"[{":
            self.stack.append(ch.decode())
            self.expect = "key" if ch == b"{" else "value"
        elif ch in b"]}":
            if self.stack:
                self.stack.pop()
            self._value_done(key=False)
        elif ch == b":":
            self.expect = "value"
        elif ch == b",":
            self.expect = "key" if self.stack and self.stack[-1] == "{" else "value"
        elif ch in b"-0123456789":
            self.number = ch
            self._value_done(key=False)
        elif ch.isalpha():
            self.literal = ch
            self._value_done(key=False)

    def _value_done(self, key: bool) -> None:
        self.expect = "colon" if key else "after"

    @property
    def depth(self) -> int:
        return len(self.stack) + self.in_string

    def closings(self) -> list[bytes]:
        """Ways to end the text, shortest first (a due value can be any of several)."""
        head = b""
        expect = self.expect
        if self.in_string:
            head += {0: b"", 1: b"n"}.get(self.escape, b"0" * (6 - self.escape)) + b'"'
            expect = "colon" if expect == "key" else "after"
        elif self.number and not self.number[-1:].isdigit():
            head += b"0"
        elif self.literal:
            for word in (b"true", b"false", b"null"):
                if word.startswith(self.literal):
                    head += word[len(self.literal):]
                    break
        values = (b'""', b"0", b"[]", b"{}", b"null", b"false")
        if not self.stack:
            return [head] if expect != "value" else [head + v for v in values]
        if expect == "colon":
            return [head + b": " + v + self._tail() for v in values]
        if expect == "value":
            first = [head + b"]" + self._tail(skip=1)] if self.stack[-1] == "[" else []
            return [*first, *(head + v + self._tail() for v in values)]
        if expect == "key":
            return [head + b"}" + self._tail(skip=1), head + b'"": null' + self._tail()]
        return [head + self._tail()]

    def _tail(self, skip: int = 0) -> bytes:
        opened = self.stack[: len(self.stack) - skip] if skip else self.stack
        return b"".join(b"]" if c == "[" else b"}" for c in reversed(opened))


class Constraint:
    """One sequence's grammar state."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: Grammar) -> None:
        error = llguidance.LLMatcher.validate_grammar(grammar.text, tokenizer)
        if error and not error.startswith("WARNING"):
            raise ConfigError(f"Invalid grammar: {error}")
        self.tokenizer = tokenizer
        self.matcher = llguidance.LLMatcher(tokenizer, grammar.text, log_level=0)
        if self.matcher.is_error():
            raise ConfigError(f"Invalid grammar: {self.matcher.get_error()}")
        import torch

        self._vocab = tokenizer.vocab_size
        self._prefill = b""
        self._after: Any = None
        #: For a JSON Schema's grammar: the text so far, to close it within the budget.
        self.closer = JsonCloser() if grammar.json_schema else None
        self._bits = torch.arange(32, dtype=torch.int32)

    def check_prefill(self, data: bytes) -> None:
        """Check that the grammar can start with the prefill's bytes (before any forward
        pass): a prefill it cannot start with is an error. Kept for :meth:`feed_prefill`."""
        self._prefill = data
        if not data:
            return
        probe = self.matcher.deep_copy()
        tokens = self.tokenizer.tokenize_bytes(data)
        accepted = probe.try_consume_tokens(tokens)
        if accepted < len(tokens):
            at = len(self.tokenizer.decode_bytes(tokens[:accepted])) if accepted else 0
            raise ConfigError(
                "The prefill cannot start a reply that matches the schema or grammar: after "
                f"{data[:at].decode('utf-8', 'replace')!r}, "
                f"{data[at:at + 20].decode('utf-8', 'replace')!r} is not allowed"
                ' (JSON is written {"a": 1, "b": [2, 3]} here)')

    def feed_prefill(self, owed: int = 0) -> None:
        """Take the prefill's bytes but the last ``owed`` (those the next token must still
        spell: it is chosen under this grammar's mask and the prefill's constraint both)."""
        data = self._prefill[: len(self._prefill) - owed]
        if data and not self.matcher.consume_tokens(self.tokenizer.tokenize_bytes(data)):
            raise ConfigError(f"The prefill breaks the grammar: {self.matcher.get_error()}")
        if self.closer is not None:
            self.closer.feed(data)

    def extends(self, extra: bytes | None) -> bool:
        """Whether the grammar takes ``extra`` bytes right after the whole prefill (None:
        whether the reply may end there): character-level prefill
        (:mod:`llmcli_local.boundary`) asks it of each cover before choosing one."""
        if self._after is None:
            self._after = self.matcher.deep_copy()
            if self._prefill:
                self._after.consume_tokens(self.tokenizer.tokenize_bytes(self._prefill))
        if extra is None:
            return bool(self._after.is_accepting())
        probe = self._after.deep_copy()
        tokens = self.tokenizer.tokenize_bytes(extra)
        return bool(probe.try_consume_tokens(tokens) == len(tokens))

    def allowed(self) -> torch.Tensor:
        """The tokens the grammar allows next, as a bool tensor over the vocabulary."""
        import torch

        words = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        return ((words.unsqueeze(1) >> self._bits) & 1).flatten()[: self._vocab].bool()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with every token the grammar forbids at -inf."""
        import torch

        allowed = self.allowed().to(logits.device)
        out = torch.full_like(logits, float("-inf"))
        width = min(len(allowed), logits.shape[-1])
        out[:width] = torch.where(allowed[:width], logits[:width], out[:width])
        return out

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise ConfigError(f"Constrained decoding: token {token} broke the grammar "
                              f"({self.matcher.get_error()})")
        if self.closer is not None:
            self.closer.feed(self.tokenizer.decode_bytes([token]))

    def closing(self, budget: int) -> list[int] | None:
        """Tokens that end the JSON text here as a value the grammar takes, where they fit
        in ``budget`` tokens and little more would (None: not yet, or no way found). Where
        the grammar forces more first (a required key), that is written, then closed."""
        import copy

        closer = self.closer
        if closer is None or self.matcher.is_stopped() or budget > CLOSING_LOOKOUT:
            return None
        probe, follow = self.matcher.deep_copy(), copy.deepcopy(closer)
        out: list[int] = []
        for _ in range(8):
            # A separator's space may be owed first (``"key": value``, ``", "``).
            for data in [*follow.closings(), *(b" " + d for d in follow.closings())]:
                tokens = self.tokenizer.tokenize_bytes(data)
                trial = probe.deep_copy()
                if trial.try_consume_tokens(tokens) == len(tokens) and trial.is_accepting():
                    found = [*out, *tokens]
                    return found if len(found) + CLOSING_MARGIN >= budget else None
            forced = list(probe.compute_ff_tokens())
            if not forced:  # the part of a closing the grammar takes (a string's quote)
                for data in follow.closings():
                    tokens = self.tokenizer.tokenize_bytes(data)
                    taken = probe.deep_copy().try_consume_tokens(tokens)
                    if taken:
                        forced = list(tokens[:taken])
                        break
            if not forced:
                return None
            probe.consume_tokens(forced)
            follow.feed(self.tokenizer.decode_bytes(forced))
            out.extend(forced)
        return None

    def consume_all(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            self.consume(token)

    def forced(self) -> list[int]:
        """Tokens the grammar forces from here (possibly none)."""
        if self.matcher.is_stopped():
            return []
        return list(self.matcher.compute_ff_tokens())

    @property
    def stopped(self) -> bool:
        """The grammar is complete and allows nothing more (the reply ends here)."""
        return bool(self.matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        return bool(self.matcher.is_accepting())

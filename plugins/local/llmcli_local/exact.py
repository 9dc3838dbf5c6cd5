"""Exact prefill: the model's own tokenization of the prefill, verified in one pass.

The reference is grammar-forced decoding: after the chat template, at each step the model
picks its token (argmax) among the tokens whose bytes are consistent with the rest of the
prefill (a non-empty prefix of what remains, or starting with all of it), until the prefill
is covered. That costs one forward step per prefill token. Here the tokenizer's split is a
*draft*, verified as speculative decoding verifies one:

1. One pass over template + draft scores every prefill position.
2. Walk the draft: at each position the constrained choice (the argmax over
   :meth:`~llmcli_local.healing.Vocab.consistent` tokens, scored by a gather, not the whole
   output head). While it equals the draft token, accept it.
3. At the first disagreement take the model's token: if its bytes are a strict prefix of what
   remains, drop the cache after it, draft the rest again and verify it in one more pass; if
   they cover what remains (the last, partial token: today's healing step), stop there and
   let the decode loop pick that token under the same constraint.

The tokens in the cache are then exactly those greedy grammar-forced decoding would have
chosen (up to floating-point ties), for one pass plus one per disagreement.

The split is always the greedy one, also when sampling: the prefill's text is fixed, so its
split is conditioning, not output, and the most likely split is the one the model would
write; only the token that completes the prefill and starts the continuation is sampled (within
the mask), as every later token is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llmcli.errors import ConfigError
from llmcli_local.backend import Backend
from llmcli_local.healing import Vocab

__all__ = ["ExactStart", "draft", "first_draft", "start"]

#: Candidate sets larger than this are scored from a whole row of logits instead of a gather.
_GATHER_LIMIT = 256


@dataclass
class ExactStart:
    #: Template ids, then the model's split of the prefill: what the cache holds.
    ids: list[int]
    #: The next token's logits (full vocabulary) after ``ids``.
    logits: torch.Tensor
    cache: Any
    #: Prefill bytes not yet covered: the next token must start with them (or be a prefix).
    pending: bytes
    #: How many prefill tokens the model's split has (in ``ids``).
    prefill_tokens: int
    #: Forward passes spent: 1, plus one per disagreement with a draft.
    passes: int


def draft(backend: Backend[Any], data: bytes) -> list[int]:
    """A split of ``data`` into tokens whose bytes are exactly ``data``: the tokenizer's own
    where it spells ``data`` exactly with text tokens, else the longest token at each point
    (a draft only: verification corrects it)."""
    if not data:
        return []
    vocab = backend.vocab
    try:
        ids = backend.encode(data.decode("utf-8"))
    except UnicodeDecodeError:
        ids = []
    if ids and _spells(vocab, ids, data):
        return ids
    out: list[int] = []
    at = 0
    while at < len(data):
        token = vocab.longest_prefix(data[at:])
        if token is None:
            raise ConfigError(
                f"This model's vocabulary cannot spell the prefill's byte {data[at]:#04x}")
        out.append(token)
        at += len(vocab.bytes_of(token))
    return out


def _spells(vocab: Vocab, ids: Sequence[int], data: bytes) -> bool:
    parts = [vocab.token_bytes[i] if 0 <= i < len(vocab) else None for i in ids]
    return all(parts) and b"".join(p for p in parts if p) == data


def first_draft(backend: Backend[Any], template_ids: Sequence[int], text: str,
                prefill: bytes) -> list[int]:
    """The tokenizer's split of the prefill in context (template + prefill tokenized
    together), when it leaves the template's own tokens as they are; else :func:`draft`."""
    together = backend.encode(text)
    head = len(template_ids)
    if list(together[:head]) == list(template_ids) and _spells(
            backend.vocab, together[head:], prefill):
        return list(together[head:])
    return draft(backend, prefill)


def _choices(vocab: Vocab, scores: Any, tokens: Sequence[int], remaining: bytes
             ) -> tuple[list[int], list[bytes]]:
    """The constrained greedy choice at each row of ``scores`` if every earlier ``tokens``
    is accepted (row j: after ``tokens[:j]``; the last row: after all of them, if the prefix
    is not covered yet), and what remains of the prefix at each row."""
    remains: list[bytes] = []
    candidates: list[list[int]] = []
    for token in tokens:
        remains.append(remaining)
        candidates.append(vocab.consistent(remaining))
        remaining = remaining[len(vocab.bytes_of(token)):]
    if remaining:
        remains.append(remaining)
        candidates.append(vocab.consistent(remaining))
    choices = [-1] * len(candidates)
    small = [j for j, c in enumerate(candidates) if 0 < len(c) <= _GATHER_LIMIT]
    if small:
        width = max(len(candidates[j]) for j in small)
        # Pad with each row's first candidate: a repeat never wins over its first place.
        ids = torch.tensor([candidates[j] + [candidates[j][0]] * (width - len(candidates[j]))
                            for j in small], dtype=torch.long)
        best = scores.gather(torch.tensor(small, dtype=torch.long), ids).argmax(dim=1)
        for j, k in zip(small, best.tolist(), strict=True):
            choices[j] = candidates[j][k]
    for j, c in enumerate(candidates):
        if len(c) > _GATHER_LIMIT:
            row = scores.full(j)
            choices[j] = c[int(torch.argmax(row[torch.tensor(c, device=row.device)]).item())]
    return choices, remains


#: After a disagreement, the next pass verifies at most this many draft tokens, doubled after
#: each pass whose draft the model agreed with: where the model splits text its own way all
#: along (text it would not have written), passes stay short instead of re-running the rest.
_FIRST_WINDOW = 4


def start(backend: Backend[Any], template_ids: Sequence[int], prefill: bytes,
          first: Sequence[int], capacity: int) -> ExactStart:
    """Run the prompt with the model's own split of ``prefill`` after ``template_ids``:
    verify the draft ``first`` in one pass and re-draft after each disagreement."""
    vocab = backend.vocab
    if not template_ids:
        raise ConfigError("Exact prefill needs a chat template that renders some text")
    ids = list(template_ids)
    tokens = list(first)
    remaining = prefill
    scores, cache = backend.prompt_scores(ids + tokens, capacity, keep=len(tokens) + 1)
    passes = 1
    window = _FIRST_WINDOW
    while True:
        choices, remains = _choices(vocab, scores, tokens, remaining)
        agreed = next((j for j, (c, t) in enumerate(zip(choices, tokens, strict=False))
                       if c != t), len(tokens))
        ids.extend(tokens[:agreed])
        if agreed == len(choices):
            # The whole draft is the model's own split and covers the prefill: the last row
            # is the next token's.
            logits = scores.full(len(tokens))
            remaining = b""
            break
        # The model's token where it disagrees, or after a draft window that fell short.
        window = window * 2 if agreed == len(tokens) else max(_FIRST_WINDOW, agreed)
        remaining = remains[agreed]
        choice = choices[agreed]
        piece = vocab.bytes_of(choice) if choice >= 0 else b""
        backend.truncate(cache, len(ids))
        if not piece:
            raise ConfigError("No token of this model's vocabulary can start the prefill's rest")
        if piece.startswith(remaining) and len(piece) > len(remaining):
            # The model's token covers the rest and goes beyond: that is the first generated
            # token; the decode loop picks it under the same constraint.
            logits = scores.full(agreed)
            break
        ids.append(choice)
        remaining = remaining[len(piece):]
        if not remaining:
            logits = backend.step(cache, choice)
            passes += 1
            break
        tokens = draft(backend, remaining)[:window]
        scores = backend.extend(cache, [choice, *tokens])
        passes += 1
    return ExactStart(ids=ids, logits=logits, cache=cache, pending=remaining,
                      prefill_tokens=len(ids) - len(template_ids), passes=passes)

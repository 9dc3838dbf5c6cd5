"""Prefill at the character level (``prefill_mode chars``, the default): the model's reply
given that it *begins with the prefill's characters*, not given one split of them into tokens.

A model trained on its tokenizer's output puts its mass on canonical token sequences (Phan et
al. 2024, arXiv 2406.16829 and 2410.09303; Hayase et al. 2025, arXiv 2506.14123). Every
canonical tokenization of ``prefill + continuation`` shares the tokenizer's split of the
prefill up to its last pre-token (the regex piece the tokenizer splits text into first): only
that **boundary region** ``R`` can be split differently once more characters follow. So:

1. **Body.** Template + the tokenizer's split of the prefill before ``R`` go in as they are.
2. **Covers.** A canonical reply that starts with ``R`` is, for some byte ``j`` of ``R``, the
   tokenizer's split of ``R[:j]`` followed by one token that spells ``R[j:]`` and maybe more
   (the Byte-Token Representation Lemma). A token that spells ``R[j:]`` exactly is followed by
   any next token. Their probabilities need the model's scores after each ``R[:j]`` split: a
   handful of short token paths, scored together with the body in **one pass** (a tree of
   continuations, each attending to the body and its own ancestors; backends without tree
   passes score them with short extensions).
3. **Canonical only.** A cover whose text the tokenizer would split otherwise
   (``[`` + ``"C`` where it writes ``["`` + ``C``) is not one the model was trained on, and
   is dropped; so is one that a grammar (``--schema``) forbids.
4. **Choice.** Greedy takes the most probable cover: the likeliest first token given the
   prefill's characters (for a prefill that ends where the model's own tokens end, what plain
   greedy decoding takes); sampling draws a cover from the exact distribution (Gumbel-max
   over the covers' log-probabilities, rejecting those dropped above), so the next
   characters follow the exact next-character distribution (:func:`next_chars`). The
   chosen path is kept in the cache, the cover's token is the first generated one, and
   decoding goes on as usual.

:func:`plan` finds the region and the paths before any pass (the scheduler sizes a cache
from it); :func:`start` runs the pass and chooses.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llmcli_local.backend import Backend, TreeBackend
from llmcli_local.healing import Vocab, plan_healing

__all__ = ["Choice", "Cover", "Covers", "Plan", "choose", "next_chars", "plan", "start"]

#: The boundary region holds at most this many of the tokenizer's prefill tokens (a very
#: long last pre-token, such as a base64 blob, keeps its earlier tokens as they are).
MAX_REGION_TOKENS = 8
#: Covers scored for a choice: the likeliest this many, and none less likely than the best
#: by more than CUTOFF nats (together they hold all but a negligible share of the mass).
MAX_CANDIDATES = 4096
CUTOFF = 30.0
#: An end of the reply right after the prefill, in the next-character distribution.
END = -1


# -- the tokenizer: text with special-token names kept as text, and its pre-tokens


class _Encoder:
    """The model's tokenizer with special tokens' names read as plain text (a prefill that
    types ``<|im_end|>`` means those characters), and where its pre-tokens start."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        self._plain = Tokenizer.from_str(tokenizer.to_str())
        self._plain.encode_special_tokens = True
        self._pre = tokenizer.pre_tokenizer if tokenizer.normalizer is None else None

    def encode(self, text: str) -> list[int]:
        return list(self._plain.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # One at a time: ``encode_batch`` starts a pool of threads that would stay (and
        # compete with the scheduler's OpenMP team).
        return [self.encode(text) for text in texts]

    def last_piece(self, text: str) -> int | None:
        """The byte offset where ``text``'s last pre-token starts (None: not known)."""
        if self._pre is None:
            return None
        pieces = self._pre.pre_tokenize_str(text)
        if not pieces:
            return None
        return len(text[: pieces[-1][1][0]].encode("utf-8"))


_ENCODERS: weakref.WeakKeyDictionary[Vocab, _Encoder | None] = weakref.WeakKeyDictionary()


def _encoder(backend: Backend[Any]) -> _Encoder | None:
    """The backend's :class:`_Encoder` (made once per loaded model), or None where its
    tokenizer is not a ``tokenizers`` one."""
    vocab = backend.vocab
    if vocab not in _ENCODERS:
        inner = backend.fast_tokenizer
        try:
            _ENCODERS[vocab] = _Encoder(inner) if inner is not None else None
        except Exception:  # a tokenizer that cannot be copied: the fallback split
            _ENCODERS[vocab] = None
    return _ENCODERS[vocab]


def _spells(vocab: Vocab, ids: Sequence[int], data: bytes) -> bool:
    parts = [vocab.token_bytes[i] if 0 <= i < len(vocab) else None for i in ids]
    return all(parts) and b"".join(p for p in parts if p) == data


# -- the plan: body, region, and the tree of paths to score


@dataclass
class Plan:
    """What the pass needs, found before it: the body's ids, the region's bytes, and the
    tree of split paths (node ``i`` is ``tokens[i]`` after node ``parents[i]``, -1 the body's
    end)."""

    body: list[int]
    region: bytes
    #: The tokenizer's split of the region (always one canonical way to write it).
    canon: list[int]
    #: The prefill's tokens in the body (after the template).
    body_prefill: int
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    #: For each ``j`` (a byte of the region where a cover may start its last token): the
    #: node its split ``R[:j]`` ends at (-1: the body's end).
    starts: dict[int, int] = field(default_factory=dict)
    #: Nodes whose token spells the rest of the region exactly, by the ``j`` they start at.
    exact_ends: dict[int, list[int]] = field(default_factory=dict)

    def node(self, parent: int, token: int) -> int:
        for i, (t, p) in enumerate(zip(self.tokens, self.parents, strict=True)):
            if t == token and p == parent:
                return i
        self.tokens.append(token)
        self.parents.append(parent)
        return len(self.tokens) - 1

    def path(self, node: int) -> list[int]:
        """The nodes from the root to ``node``, in order."""
        out: list[int] = []
        while node >= 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]


def plan(backend: Backend[Any], template_ids: Sequence[int], template: str,
         prefill: str) -> Plan:
    """The body, the boundary region and the paths to score for ``prefill`` after the
    rendered ``template`` (whose ids are ``template_ids``)."""
    from llmcli_local import exact

    vocab = backend.vocab
    data = prefill.encode("utf-8")
    encoder = _encoder(backend)
    head = len(template_ids)
    together = backend.encode(template + prefill)
    if list(together[:head]) == list(template_ids) and _spells(vocab, together[head:], data):
        tokens = list(together[head:])
    elif encoder is not None and _spells(vocab, plain := encoder.encode(prefill), data):
        tokens = plain  # special-token names typed as text
    else:
        tokens = exact.draft(backend, data)
    offsets = [0]
    for token in tokens:
        offsets.append(offsets[-1] + len(vocab.bytes_of(token)))
    start = encoder.last_piece(prefill) if encoder is not None else None
    if start is None:
        # No pre-tokenizer to ask: the tokens healing would back off, at least one.
        backed = plan_healing([*template_ids, *tokens], prefill, vocab, MAX_REGION_TOKENS)
        first = len(tokens) - max(1, backed.backed_off)
    else:
        first = max(i for i, offset in enumerate(offsets[:-1]) if offset <= start) \
            if offsets[:-1] else 0
    first = max(0, min(first, len(tokens) - 1), len(tokens) - MAX_REGION_TOKENS)
    # An added token (``<think>``) is never split or merged: the region starts after it,
    # and is empty where the prefill ends with one.
    first = max([first, *(i + 1 for i in range(first, len(tokens))
                          if tokens[i] in vocab.atomic)])
    region = data[offsets[first]:]
    out = Plan(body=[*template_ids, *tokens[:first]], region=region, canon=tokens[first:],
               body_prefill=first)
    if not region:
        return out
    canon_at = {offsets[k] - offsets[first]: k - first for k in range(first, len(tokens))}
    for j in range(len(region)):
        rest = region[j:]
        if not vocab.starting_with(rest):
            continue
        split = _split(encoder, vocab, region[:j], canon_at.get(j), out.canon)
        if split is None:
            continue
        node = -1
        for token in split:
            node = out.node(node, token)
        out.starts[j] = node
        out.exact_ends[j] = [out.node(node, t) for t in vocab.exact_ids(rest)]
    return out


def _split(encoder: _Encoder | None, vocab: Vocab, head: bytes, canon_tokens: int | None,
           canon: list[int]) -> list[int] | None:
    """The canonical split of the region's first bytes ``head``: the tokenizer's own where
    they are whole characters, else the region's split where a token ends there."""
    if not head:
        return []
    if encoder is not None:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            ids = encoder.encode(text)
            if _spells(vocab, ids, head):
                return ids
    return canon[:canon_tokens] if canon_tokens is not None else None


# -- the pass


def _scores(backend: Backend[Any], p: Plan, capacity: int) -> tuple[torch.Tensor, Any, int]:
    """Log-probabilities after the body (row 0) and after each node (row 1 + i), the cache,
    and the forward passes spent."""
    if isinstance(backend, TreeBackend):
        scores, cache = backend.prompt_tree(p.body, p.tokens, p.parents, capacity)
        return torch.log_softmax(scores.all().float(), dim=-1).cpu(), cache, 1
    scores, cache = backend.prompt_scores(p.body, capacity, keep=1)
    found = [scores.full(0)]
    passes = 1
    for node in range(len(p.tokens)):
        backend.truncate(cache, len(p.body))
        path = [p.tokens[n] for n in p.path(node)]
        extended = backend.extend(cache, path)
        found.append(extended.full(len(path) - 1))
        passes += 1
    backend.truncate(cache, len(p.body))
    return torch.log_softmax(torch.stack(found).float(), dim=-1).cpu(), cache, passes


# -- the choice


@dataclass
class Choice:
    #: Nodes kept after the body (a path from the root).
    path: list[int]
    #: The first generated token, chosen here.
    first: int
    #: The prefill's bytes that token still spells (the text stream skips them).
    pending: bytes
    #: Covers weighed, and those dropped as non-canonical or forbidden by a grammar.
    considered: int
    dropped: int


@dataclass(frozen=True)
class Cover:
    """One way to write the region and go past it: the split of ``R[:j]``, then ``token``
    (spelling ``R[j:]`` and more), or then the exact-end node ``end`` and ``token`` after it
    (an end of turn: the reply ends with the prefill)."""

    j: int
    end: int
    token: int
    #: The bytes past the prefill (None: the reply ends there).
    extra: bytes | None
    #: The tokens after the body and what they spell (for the canonical check).
    ids: list[int]
    spelled: bytes

    @property
    def char(self) -> int:
        """The first byte past the prefill (:data:`END` where the reply ends)."""
        return self.extra[0] if self.extra else END


class Covers:
    """Every cover of the region, with its log-probability under the model."""

    def __init__(self, backend: Backend[Any], p: Plan, logp: torch.Tensor) -> None:
        vocab = backend.vocab
        self._p, self._vocab, self._eos = p, vocab, backend.eos_ids
        region = p.region
        parts: list[torch.Tensor] = []
        self._meta: list[tuple[int, int, torch.Tensor]] = []  # (j, exact end or -1, ids)
        lengths = _lengths(vocab)
        text_ids = _text_ids(vocab, self._eos)
        for j, node in p.starts.items():
            base = self._path_logp(logp, node)
            ids = torch.tensor(vocab.starting_with(region[j:]), dtype=torch.long)
            ids = ids[lengths[ids] > len(region) - j]
            if len(ids):
                parts.append(base + logp[node + 1, ids])
                self._meta.append((j, -1, ids))
            for end in p.exact_ends.get(j, []):
                # Only the likeliest next tokens can be among the covers weighed.
                row = logp[end + 1, text_ids]
                top = torch.topk(row, min(MAX_CANDIDATES, len(row)))
                parts.append(base + float(logp[node + 1, p.tokens[end]]) + top.values)
                self._meta.append((j, end, text_ids[top.indices]))
        #: Log-probability of each cover (flat over every kind).
        self.logp = torch.cat(parts) if parts else torch.empty(0)
        self._owner = torch.cat([torch.full((len(x),), k, dtype=torch.long)
                                 for k, x in enumerate(parts)]) if parts else self.logp.long()
        self._token = torch.cat([m[2] for m in self._meta]) if parts else self.logp.long()

    def _path_logp(self, logp: torch.Tensor, node: int) -> float:
        total, parent = 0.0, -1
        for n in (self._p.path(node) if node >= 0 else []):
            total += float(logp[parent + 1, self._p.tokens[n]])
            parent = n
        return total

    def __len__(self) -> int:
        return len(self.logp)

    def __getitem__(self, k: int) -> Cover:
        p, vocab, region = self._p, self._vocab, self._p.region
        j, end, _ = self._meta[int(self._owner[k])]
        token = int(self._token[k])
        start = p.starts[j]
        split = [p.tokens[n] for n in p.path(start)] if start >= 0 else []
        if end < 0:
            spelled = region[:j] + vocab.bytes_of(token)
            return Cover(j, end, token, spelled[len(region):], [*split, token], spelled)
        last = p.tokens[end]
        if token in self._eos and not vocab.token_bytes[token]:
            return Cover(j, end, token, None, [*split, last], region)
        spelled = region + vocab.bytes_of(token)
        return Cover(j, end, token, spelled[len(region):], [*split, last, token], spelled)

    def likeliest(self) -> torch.Tensor:
        """Indices of the covers that hold the mass: within :data:`CUTOFF` nats of the best,
        at most :data:`MAX_CANDIDATES`."""
        best = float(self.logp.max())
        keep = torch.nonzero(self.logp >= best - CUTOFF).flatten()
        if len(keep) > MAX_CANDIDATES:
            keep = keep[torch.topk(self.logp[keep], MAX_CANDIDATES).indices]
        return keep


#: The distribution of next characters weighs covers, likeliest first, until those left
#: hold less than this share of the mass found valid.
TAIL = 1e-5

Enough = Callable[[list[tuple[int, "Cover"]], float], bool]


def _valid(backend: Backend[Any], covers: Covers, order: Sequence[int],
           allowed: Callable[[bytes | None], bool] | None, enough: Enough
           ) -> tuple[list[tuple[int, Cover]], int]:
    """The covers among ``order`` that are canonical and that a grammar allows, in that
    order, until ``enough(valid, rest)`` says so (``rest``: the log-probability mass of the
    covers not looked at yet, where ``order`` is by probability). And how many were looked
    at."""
    encoder = _encoder(backend)
    valid: list[tuple[int, Cover]] = []
    seen = 0
    logp = covers.logp[list(order)].double() if order else torch.empty(0)
    # The mass of every cover from position i on.
    tail = torch.logcumsumexp(logp.flip(0), 0).flip(0) if len(logp) else logp
    for chunk in _chunks(list(order), 16):
        described = [covers[k] for k in chunk]
        canonical = _canonical(encoder, [(c.ids, c.spelled) for c in described])
        for k, cover, good in zip(chunk, described, canonical, strict=True):
            seen += 1
            if good and (allowed is None or allowed(cover.extra)):
                valid.append((k, cover))
                rest = float(tail[seen]) if seen < len(order) else -math.inf
                if enough(valid, rest):
                    return valid, seen
    return valid, seen


def _masses(covers: Covers, valid: Sequence[tuple[int, Cover]]) -> dict[int, float]:
    """Log-probability mass of each next character over ``valid``."""
    mass: dict[int, float] = {}
    for k, cover in valid:
        mass[cover.char] = _logaddexp(mass.get(cover.char, -math.inf), float(covers.logp[k]))
    return mass


def next_chars(backend: Backend[Any], p: Plan, logp: torch.Tensor,
               allowed: Callable[[bytes | None], bool] | None = None) -> dict[int, float]:
    """The distribution of the first byte past the prefill (:data:`END`: the reply ends
    there), over the canonical covers a grammar allows."""
    covers = Covers(backend, p, logp)
    keep = covers.likeliest()
    order = keep[torch.argsort(covers.logp[keep], descending=True)].tolist()

    def enough(valid: list[tuple[int, Cover]], rest: float) -> bool:
        found = float(torch.logsumexp(covers.logp[[k for k, _ in valid]], 0))
        return rest < found + math.log(TAIL)

    valid, _ = _valid(backend, covers, order, allowed, enough)
    mass = _masses(covers, valid)
    total = -math.inf
    for value in mass.values():
        total = _logaddexp(total, value)
    return {char: math.exp(value - total) for char, value in mass.items()}


def choose(backend: Backend[Any], p: Plan, logp: torch.Tensor, *, temperature: float,
           generator: torch.Generator | None,
           allowed: Callable[[bytes | None], bool] | None = None,
           top_k: int = 0, top_p: float = 1.0) -> Choice:
    """Pick a cover (see the module's docstring). ``logp``: the pass's log-probabilities
    (row 0 after the body, 1 + i after node i). ``allowed(extra)``: whether a grammar takes
    ``extra`` bytes after the whole prefill (None: the reply ends there). When sampling,
    ``top_k`` and ``top_p`` keep the likeliest covers, as they keep tokens at later steps
    (``top_k`` 1 is greedy)."""
    covers = Covers(backend, p, logp)
    keep = covers.likeliest()
    if top_k == 1:
        temperature = 0.0
    if temperature > 0:
        keep = keep[torch.argsort(covers.logp[keep], descending=True)]
        if top_k > 0:
            keep = keep[:top_k]
        if top_p < 1.0:
            probs = torch.softmax(covers.logp[keep].double() / temperature, dim=-1)
            before = probs.cumsum(0) - probs
            keep = keep[before < top_p]
    if temperature > 0:
        # Gumbel-max: the first valid cover in this order is a draw from the covers'
        # distribution restricted to the valid ones.
        uniform = torch.rand(len(keep), generator=generator, dtype=torch.float64,
                             device=generator.device if generator is not None else "cpu").cpu()
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-300, 1.0)))
        keys = covers.logp[keep].double() / temperature + gumbel
    else:
        keys = covers.logp[keep].double()
    order = keep[torch.argsort(keys, descending=True)].tolist()
    def enough(valid: list[tuple[int, Cover]], rest: float) -> bool:
        # The first valid cover in this order: the likeliest (greedy), or the draw.
        return True

    valid, seen = _valid(backend, covers, order, allowed, enough)
    if not valid:  # nothing canonical (a tokenizer this cannot read): the likeliest cover
        valid = [(order[0], covers[order[0]])]
    pick = valid[0][1]
    start = p.starts[pick.j]
    node = pick.end if pick.end >= 0 else start
    return Choice(path=p.path(node) if node >= 0 else [], first=pick.token,
                  pending=b"" if pick.end >= 0 else p.region[pick.j:],
                  considered=seen, dropped=seen - len(valid))


_TEXT_IDS: weakref.WeakKeyDictionary[Vocab, torch.Tensor] = weakref.WeakKeyDictionary()


_LENGTHS: weakref.WeakKeyDictionary[Vocab, torch.Tensor] = weakref.WeakKeyDictionary()


def _lengths(vocab: Vocab) -> torch.Tensor:
    """Every token's length in bytes (special tokens: 0)."""
    lengths = _LENGTHS.get(vocab)
    if lengths is None:
        lengths = torch.tensor([len(b or b"") for b in vocab.token_bytes], dtype=torch.long)
        _LENGTHS[vocab] = lengths
    return lengths


def _text_ids(vocab: Vocab, eos: frozenset[int]) -> torch.Tensor:
    """Every token that may follow a prefill: those with text, and the end of turn."""
    ids = _TEXT_IDS.get(vocab)
    if ids is None:
        ids = torch.tensor([t for t in range(len(vocab)) if vocab.token_bytes[t] or t in eos],
                           dtype=torch.long)
        _TEXT_IDS[vocab] = ids
    return ids


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _canonical(encoder: _Encoder | None, items: Sequence[tuple[list[int], bytes]]
               ) -> list[bool]:
    """Whether the tokenizer splits each text as the given ids (text that is not whole
    UTF-8 cannot be asked, and counts as canonical; so does everything without an
    encoder)."""
    if encoder is None:
        return [True] * len(items)
    texts: list[str] = []
    where: list[int] = []
    out = [True] * len(items)
    for i, (_, data) in enumerate(items):
        try:
            texts.append(data.decode("utf-8"))
            where.append(i)
        except UnicodeDecodeError:
            continue
    for i, ids in zip(where, encoder.encode_batch(texts), strict=True):
        out[i] = ids == items[i][0]
    return out


def start(backend: Backend[Any], p: Plan, capacity: int, *, temperature: float,
          generator: torch.Generator | None,
          allowed: Callable[[bytes | None], bool] | None = None, top_k: int = 0,
          top_p: float = 1.0) -> tuple[Choice, Any, torch.Tensor, int]:
    """The prompt pass with the region's paths, and the choice: the choice, the cache
    (body and the chosen path), the logits after it, and the forward passes spent."""
    logp, cache, passes = _scores(backend, p, capacity)
    choice = choose(backend, p, logp, temperature=temperature, generator=generator,
                    allowed=allowed, top_k=top_k, top_p=top_p)
    body = len(p.body)
    if isinstance(backend, TreeBackend):
        backend.keep_path(cache, body, choice.path)
    else:
        backend.truncate(cache, body)
        if choice.path:
            backend.extend(cache, [p.tokens[n] for n in choice.path])
    row = choice.path[-1] + 1 if choice.path else 0
    return choice, cache, logp[row], passes

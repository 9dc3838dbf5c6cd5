"""The prefill normalizer: every backend's output, streamed or not, becomes text that begins
with the user's prefill exactly once.

One state machine serves streams and whole strings (a whole string is a stream of one chunk).
It buffers only while the start of the reply is still ambiguous, then passes chunks through.

* eats: the reply is the continuation. Emit prefill + reply. When the backend had to send a
  different prefill (Anthropic rejects trailing whitespace, so "Answer: " goes out as
  "Answer:"), the continuation is relative to what was sent; the part of it that re-types the
  removed characters is dropped so the user sees their exact prefill and no doubled whitespace.
* echoes: the reply should start with the prefill. Strip the echo (the prefill, what was sent,
  or either without trailing whitespace), then continue as eats. A reply that did not echo is
  treated as a continuation.
* emulated: the model was asked to start with the prefill. It may repeat it (perhaps after
  leading whitespace or a short preamble line such as "Sure, here it is:"), or start right
  after it. Keep one copy.
* unsupported: with an empty prefill the text passes through; a prefill never gets here
  (the API refuses it before any request).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from llmcli.capabilities import PrefillSupport

__all__ = ["PREAMBLE_MAX_CHARS", "PrefillNormalizer", "normalize_stream", "normalize_text"]

#: The longest first line that may be taken for a preamble in an emulated reply.
PREAMBLE_MAX_CHARS = 160

_PREAMBLE_START = re.compile(
    r"^(sure|certainly|of course|okay|ok|absolutely|here|alright|no problem)\b", re.IGNORECASE
)


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _is_proper_prefix(part: str, whole: str) -> bool:
    return len(part) < len(whole) and whole.startswith(part)


def _looks_like_preamble(line: str) -> bool:
    line = line.strip()
    return bool(line) and (line.endswith(":") or bool(_PREAMBLE_START.match(line)))


class PrefillNormalizer:
    """Incremental normalizer. ``feed`` each chunk, then call ``finish`` once.

    The concatenation of everything returned starts with ``prefill`` exactly once, and does
    not depend on how the reply was split into chunks.
    """

    def __init__(
        self, prefill: str, support: PrefillSupport, sent_prefill: str | None = None
    ) -> None:
        self.prefill = prefill
        self.support = PrefillSupport(support)
        self.sent_prefill = prefill if sent_prefill is None else sent_prefill
        self._buffer = ""
        self._fed = False
        self._finished = False
        # With no prefill there is nothing to normalize.
        self._decided = not prefill

    def set_sent_prefill(self, sent_prefill: str) -> None:
        """Record the prefill as the backend actually sent it (before any text arrives)."""
        if self._fed:
            raise RuntimeError("the sent prefill must be reported before the first chunk")
        self.sent_prefill = sent_prefill

    def feed(self, chunk: str) -> str:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._fed = True
        if self._decided:
            return chunk
        self._buffer += chunk
        return self._try_decide(final=False) or ""

    def finish(self) -> str:
        if self._finished:
            return ""
        self._finished = True
        if self._decided:
            return ""
        return self._try_decide(final=True) or ""

    # -- decisions -----------------------------------------------------------------------

    def _try_decide(self, final: bool) -> str | None:
        buf = self._buffer
        if self.support is PrefillSupport.EATS_PREFIX:
            out = self._eaten(buf, self.sent_prefill, final)
        elif self.support is PrefillSupport.ECHOES_PREFIX:
            out = self._echoed(buf, final)
        elif self.support is PrefillSupport.EMULATED:
            out = self._emulated(buf, final)
        else:  # UNSUPPORTED with a prefill: the API refuses it; be safe anyway.
            out = self._eaten(buf, self.prefill, final)
        if out is not None:
            self._decided = True
            self._buffer = ""
        return out

    def _eaten(self, continuation: str, sent: str, final: bool) -> str | None:
        """``continuation`` follows ``sent`` on the wire; return prefill + continuation."""
        prefill = self.prefill
        if sent == prefill or not prefill.startswith(sent):
            return prefill + continuation
        removed = prefill[len(sent) :]
        if not final and _is_proper_prefix(continuation, removed):
            return None
        return prefill + continuation[_common_prefix_len(continuation, removed) :]

    def _echoed(self, buf: str, final: bool) -> str | None:
        candidates = {self.prefill, self.sent_prefill, self.prefill.rstrip(),
                      self.sent_prefill.rstrip()}
        candidates.discard("")
        if not final and any(_is_proper_prefix(buf, c) for c in candidates):
            return None
        echoed = [c for c in candidates if buf.startswith(c)]
        if echoed:
            echo = max(echoed, key=len)
            return self._eaten(buf[len(echo) :], echo, final)
        if final and any(c.startswith(buf) for c in candidates):
            return self.prefill  # the reply stopped inside its own echo
        return self._eaten(buf, self.sent_prefill, final)

    def _emulated(self, buf: str, final: bool) -> str | None:
        prefill = self.prefill
        # The model may drop leading whitespace when it repeats the prefill.
        core = prefill.lstrip() or prefill
        body = buf.lstrip()
        if buf.startswith(prefill):
            return prefill + buf[len(prefill) :]
        if body.startswith(core):
            return prefill + body[len(core) :]
        if not final and (prefill.startswith(buf) or core.startswith(body)):
            return None
        newline = body.find("\n")
        if newline == -1:
            if not final and len(body) <= PREAMBLE_MAX_CHARS:
                return None  # the first line may still turn out to be a preamble
        elif newline <= PREAMBLE_MAX_CHARS and _looks_like_preamble(body[:newline]):
            after = body[newline + 1 :].lstrip()
            if after.startswith(core):
                return prefill + after[len(core) :]
            if not final and core.startswith(after):
                return None
        # The reply starts after the prefill.
        if prefill[-1].isspace():
            return prefill + body
        return prefill + buf


def normalize_stream(
    chunks: Iterable[str],
    prefill: str,
    support: PrefillSupport,
    sent_prefill: str | None = None,
) -> Iterator[str]:
    """Yield normalized chunks; empty chunks are not yielded."""
    normalizer = PrefillNormalizer(prefill, support, sent_prefill)
    for chunk in chunks:
        out = normalizer.feed(chunk)
        if out:
            yield out
    tail = normalizer.finish()
    if tail:
        yield tail


def normalize_text(
    text: str, prefill: str, support: PrefillSupport, sent_prefill: str | None = None
) -> str:
    """The non-streaming case: the same state machine, fed one chunk."""
    return "".join(normalize_stream([text], prefill, support, sent_prefill))

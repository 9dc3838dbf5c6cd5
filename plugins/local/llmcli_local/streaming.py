"""From generated token bytes to safe text chunks: healed-prefix removal, UTF-8-safe
incremental decoding, and stop sequences that are never emitted, not even in part.

Pure Python (no torch), so every edge case is unit-testable.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

__all__ = ["StopFilter", "TextStream"]


class StopFilter:
    """Holds back any tail that could be the start of a stop sequence until it is decided."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text that is safe to emit now. Sets ``stopped`` when a stop sequence appears."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buffer[: min(hits)]
        keep = 0
        for stop in self.stops:
            # The longest tail of the buffer that is a proper prefix of this stop sequence.
            for n in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:n]):
                    keep = n
                    break
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of generation the held tail was not a stop sequence after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


class TextStream:
    """Token bytes in, text out: drops the healed bytes, then decodes UTF-8 incrementally
    (a character split across tokens is emitted whole, once complete), then applies stops."""

    def __init__(self, skip: bytes = b"", stops: Sequence[str] = ()) -> None:
        self._skip = skip
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = StopFilter(stops)

    @property
    def stopped(self) -> bool:
        return self.stops.stopped

    def feed(self, data: bytes) -> str:
        if self._skip:
            # The constraint guarantees the first bytes equal the healed ones: drop them.
            n = min(len(self._skip), len(data))
            self._skip = self._skip[n:]
            data = data[n:]
        if not data:
            return ""
        return self.stops.feed(self._decoder.decode(data))

    def finish(self) -> str:
        if self.stopped:
            return ""
        text = self.stops.feed(self._decoder.decode(b"", final=True))
        return text + self.stops.flush()

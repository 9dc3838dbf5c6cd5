"""OpenAI-compatible fakes for ``llmcli batch``: a vLLM-style server that streams slowly, that
dies mid-run, or that rate-limits; built on :class:`tests.fakes.openai.FakeOpenAI` without
changing it (its replies are wrapped, not rewritten)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tests.fakes.base import RecordedRequest, Reply
from tests.fakes.openai import FakeOpenAI, error_reply

__all__ = ["BatchServer", "rate_limited", "write_servers"]


def _slowly(events: Iterable[str | bytes], pause: float) -> Iterator[str | bytes]:
    for event in events:
        time.sleep(pause)
        yield event


class BatchServer(FakeOpenAI):
    """A vLLM fake (``continue_final_message``: eats) for batch runs.

    ``chunk_delay``: seconds before each streamed event (a slow model); ``die_after``: after
    this many chat requests every reply breaks off after its first event and the server
    refuses further connections (a node that died); ``in_flight_max`` records the most
    requests it served at once."""

    def __init__(self, *, chunk_delay: float = 0.0, die_after: int | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("continuation", " and the rest of the reply.")
        super().__init__("vllm", **kwargs)
        self.chunk_delay = chunk_delay
        self.die_after = die_after
        self.in_flight = 0
        self.in_flight_max = 0
        self._count_lock = threading.Lock()
        self.served = 0

    def handle(self, request: RecordedRequest) -> Reply:
        with self._count_lock:
            self.served += 1
            served = self.served
        reply = super().handle(request)
        if self.die_after is not None and served > self.die_after:
            reply.cut_after = 1
            if self._httpd is not None:
                # Stop accepting; this request's connection breaks off after one event.
                threading.Thread(target=self.stop, daemon=True).start()
        if reply.events is not None:
            reply.events = self._counted(_slowly(reply.events, self.chunk_delay))
        return reply

    def _counted(self, events: Iterator[str | bytes]) -> Iterator[str | bytes]:
        with self._count_lock:
            self.in_flight += 1
            self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            yield from events
        finally:
            with self._count_lock:
                self.in_flight -= 1


def rate_limited(retry_after: str = "0") -> Reply:
    """A 429 as OpenAI-compatible servers send it, with ``Retry-After``."""
    return error_reply(429, "Rate limit reached for requests", type_="requests",
                       code="rate_limit_exceeded", headers={"retry-after": retry_after})


def write_servers(path: Path, **servers: FakeOpenAI | str) -> None:
    """The servers file with one vLLM-preset entry per name (a fake, or a base URL)."""
    entries = []
    for name, server in servers.items():
        url = server if isinstance(server, str) else server.url + "/v1"
        entries.append({"id": name, "model_name": "served-model", "base_url": url,
                        "prefill_style": "continue_final_message"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"servers": entries}))

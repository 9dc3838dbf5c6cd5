"""Endpoint balancing: which model of a group takes the next request, how many run at
once, and the back-off that pauses an endpoint after a rate limit or a failure."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable

from llmcli.batch.retry import MAX_BACKOFF_S
from llmcli.contract import Model, concurrency_limit

__all__ = ["DEFAULT_JOBS", "Endpoints", "default_jobs"]


#: ``-j`` when not given, for models that declare no limit of their own (remote APIs).
DEFAULT_JOBS = 8


def default_jobs(models: Iterable[Model]) -> int:
    """``-j`` when not given: the most any model of the batch takes, 8 for remote ones."""
    return max((concurrency_limit(m) or DEFAULT_JOBS for m in models), default=1)


class Endpoints:
    """Hands out the model (endpoint) of a group that should take the next request: one
    with room under its limit and not paused, the least busy first, round-robin on ties.
    A rate limit or a failure pauses an endpoint for everyone (that is the back-off)."""

    def __init__(self, jobs: int) -> None:
        self._jobs = jobs
        self._cond = threading.Condition()
        self._busy: dict[int, int] = {}
        self._paused_until: dict[int, float] = {}
        self._fails: dict[int, int] = {}
        self._next: dict[tuple[int, ...], int] = {}
        #: Requests sent to each endpoint (by model object id), for the summary and tests.
        self.sent: dict[int, int] = {}

    def _limit(self, model: Model) -> int:
        return min(self._jobs, concurrency_limit(model) or self._jobs)

    def acquire(self, group: list[Model], stop: threading.Event) -> Model | None:
        key = tuple(id(m) for m in group)
        with self._cond:
            while not stop.is_set():
                now = time.monotonic()
                start = self._next.get(key, 0)
                order = group[start:] + group[:start]
                ready = [m for m in order if self._busy.get(id(m), 0) < self._limit(m)
                         and self._paused_until.get(id(m), 0.0) <= now]
                if ready:
                    chosen = min(ready, key=lambda m: self._busy.get(id(m), 0))
                    self._next[key] = (group.index(chosen) + 1) % len(group)
                    self._busy[id(chosen)] = self._busy.get(id(chosen), 0) + 1
                    self.sent[id(chosen)] = self.sent.get(id(chosen), 0) + 1
                    return chosen
                waits = [until - now for m in group
                         if (until := self._paused_until.get(id(m), 0.0)) > now]
                self._cond.wait(min([0.2, *waits]))
        return None

    def release(self, model: Model) -> None:
        with self._cond:
            self._busy[id(model)] -= 1
            self._cond.notify_all()

    def failed(self, model: Model, told: float | None = None) -> float:
        """A retryable failure at ``model``: pause it for everyone, for what the server
        said (``Retry-After``) or for a back-off that doubles with each failure in a row
        (so a dead endpoint is tried less and less often). Returns the pause."""
        with self._cond:
            fails = self._fails[id(model)] = self._fails.get(id(model), 0) + 1
            backoff = min(MAX_BACKOFF_S, 0.5 * 2 ** (fails - 1)) * random.uniform(0.8, 1.2)
            seconds = min(MAX_BACKOFF_S, told) if told is not None else backoff
            until = time.monotonic() + seconds
            self._paused_until[id(model)] = max(self._paused_until.get(id(model), 0.0), until)
            self._cond.notify_all()
            return seconds

    def succeeded(self, model: Model) -> None:
        with self._cond:
            self._fails[id(model)] = 0

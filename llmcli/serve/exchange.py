"""One :class:`llmcli.Response` run on its own thread, its chunks handed to the event loop.

Backends are synchronous generators; running each on a thread lets remote requests proceed
concurrently and never blocks the event loop. A model that declares how many calls it takes at
once (``batch_concurrency``, as ``llmcli batch`` reads it: the local runtime declares 8, what
its scheduler steps together) gets that many slots; further requests to it queue on the event
loop for a slot, holding no thread, so they never hold up anything else, and a client that
leaves while waiting frees its place at once.

Cancelling (a client that went away, or shutdown) stops the response at once, even while its
backend waits on an upstream that says nothing (:meth:`llmcli.Response.cancel` shuts its
connections down); the Response then logs what arrived as ``partial``, as Ctrl-C does in the
terminal. At shutdown, :func:`stop_all` cancels what is left, waits a moment for the threads,
and logs any that did not end itself (:meth:`llmcli.Response.abandon`). The threads are
daemons: a backend stuck where no cancellation reaches never holds the process up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from llmcli.contract import Model, concurrency_limit
from llmcli.request import Reasoning
from llmcli.response import Response

__all__ = ["STOP_WAIT", "Exchange", "model_slots", "stop_all"]

#: Seconds the threads of cancelled exchanges get to end at shutdown (they end within
#: milliseconds once their connections are shut down, or an SDK's retry pause), before the
#: ones still running are logged from the event loop (:func:`stop_all`).
STOP_WAIT = 0.8

_slots: dict[tuple[str | None, str], threading.BoundedSemaphore] = {}
_slots_guard = threading.Lock()


def model_slots(model: Model) -> threading.BoundedSemaphore | None:
    """The slots of ``model``, shared by every request to it (None: no limit).

    The limit is the one ``llmcli batch`` keeps (:func:`llmcli.contract.concurrency_limit`:
    the model's ``batch_concurrency``); models that declare none (the remote providers) run
    as many requests as arrive."""
    declared = concurrency_limit(model)
    if declared is None:
        return None
    with _slots_guard:
        return _slots.setdefault((model.plugin, model.model_id),
                                 threading.BoundedSemaphore(declared))


#: How often a request queued for a model's slot looks for a free one (event-loop time only).
_SLOT_POLL = 0.02
#: Requests waiting for a slot, by the slots' id, first come first served.
_queued: dict[int, collections.deque[Exchange]] = {}


class Exchange:
    """Iterate ``response`` on a thread; ``chunks()`` yields its normalized chunks and its
    reasoning."""

    def __init__(self, response: Response, slots: threading.BoundedSemaphore | None = None,
                 on_done: Callable[[Exchange], None] | None = None) -> None:
        self.response = response
        self._slots = slots
        #: Called on the exchange's thread once the response has ended (and been logged).
        self._on_done = on_done
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.thread = threading.Thread(target=self._pump, daemon=True,
                                       name=f"llmcli-serve-{response.id[:8]}")
        self._waiting: asyncio.Task[None] | None = None

    def start(self) -> Exchange:
        """Run the response on its thread; where the model's slots are all taken, wait for
        one on the event loop first, in arrival order, so that a queued request holds no
        thread."""
        slots = self._slots
        if slots is None or (not _queued.get(id(slots)) and slots.acquire(blocking=False)):
            self.thread.start()
        else:
            self._waiting = self._loop.create_task(self._wait_for_slot(slots))
        return self

    async def _wait_for_slot(self, slots: threading.BoundedSemaphore) -> None:
        queue = _queued.setdefault(id(slots), collections.deque())
        queue.append(self)
        try:
            while not (queue[0] is self and slots.acquire(blocking=False)):
                if self.cancelled:
                    self._put("end")
                    if self._on_done is not None:
                        self._on_done(self)
                    return
                await asyncio.sleep(_SLOT_POLL)
        finally:
            queue.remove(self)
        self.thread.start()

    def cancel(self, error: BaseException | None = None) -> None:
        """Stop the response now, from any thread (the event loop's: it never blocks). With
        ``error``, whoever reads :meth:`chunks` gets it at once, after the chunks already
        handed over, without waiting for the thread to wind down (a shutdown's 503)."""
        first = not self._cancelled.is_set()
        self._cancelled.set()
        self.response.cancel()
        if error is not None and first:
            self._put("error", error)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _put(self, kind: str, value: Any = None) -> None:
        # A closed event loop (shutdown) raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))

    def _pump(self) -> None:
        try:
            if self._slots is None:
                self._iterate()
            else:  # started holding a slot (start, _wait_for_slot)
                try:
                    self._iterate()
                finally:
                    self._slots.release()
        except BaseException as exc:  # handed to the event loop, which answers with it
            self._put("error", exc)
        else:
            self._put("end")
        finally:
            if self._on_done is not None:
                self._on_done(self)

    def _iterate(self) -> None:
        if self.cancelled:
            return
        chunks = self.response.parts()  # the text, and the model's reasoning
        try:
            for chunk in chunks:
                self._put("chunk", chunk)
                if self.cancelled:
                    break
        finally:
            # Closing the iterator mid-stream makes the Response log what arrived as partial.
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    async def chunks(self) -> AsyncIterator[str | Reasoning]:
        """Normalized chunks (and :class:`Reasoning`) as they arrive; raises what the
        response raised."""
        while True:
            kind, value = await self._queue.get()
            if kind == "chunk":
                yield value
            elif kind == "error":
                raise value
            else:
                return


async def stop_all(exchanges: Collection[Exchange], wait: float) -> list[Exchange]:
    """Cancel every exchange, give their threads ``wait`` seconds in all to end (each logs
    what arrived as partial), then log those still running as partial from here. Returns
    the ones that had to be abandoned."""
    for exchange in exchanges:
        exchange.cancel()
    deadline = time.monotonic() + wait
    while any(e.thread.is_alive() for e in exchanges) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    stuck = [e for e in exchanges if e.thread.is_alive()]

    def abandon() -> None:
        for exchange in stuck:
            exchange.response.abandon()

    if stuck:
        await asyncio.to_thread(abandon)  # log writes may wait: not on the event loop
    return stuck

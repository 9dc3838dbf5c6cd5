"""One :class:`llmcli.AsyncResponse` run in a task on the event loop, its chunks handed to the
request that reads them.

Each response runs over its model's ``execute_async``. The remote providers' (anthropic,
openai, mistral) is their SDK's asynchronous client: a request waiting on its upstream holds a
task, not a thread, so thousands of slow streams cost no more threads than one. A model
without one (the local runtime, Gemini) runs its ``execute`` on one worker thread for as long
as its response runs (:mod:`llmcli.bridge`). A model that declares how many calls it takes at
once (``batch_concurrency``, as ``llmcli batch`` reads it: the local runtime declares 8, what
its scheduler steps together) gets that many slots; further requests to it queue on the event
loop for a slot, in arrival order, holding no thread, so they never hold up anything else, and
a client that leaves while waiting frees its place at once.

Cancelling (a client that went away, or shutdown) stops the response at once, even while its
backend waits on an upstream that says nothing (:meth:`llmcli.AsyncResponse.cancel` ends the
wait; a bridged backend's connections are shut down); the response then logs what arrived as
``partial``, as Ctrl-C does in the terminal. At shutdown, :func:`stop_all` cancels what is
left, waits a moment for the tasks to end, and logs any that did not
(:meth:`llmcli.AsyncResponse.abandon`). A bridged backend stuck where no cancellation reaches
(a computation) keeps its daemon thread a while, but its response has ended and is logged: it
never holds the process up.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from llmcli.contract import Model, concurrency_limit
from llmcli.request import Reasoning
from llmcli.response import AsyncResponse

__all__ = ["STOP_WAIT", "Exchange", "model_slots", "stop_all"]

#: Seconds the tasks of cancelled exchanges get to end at shutdown (they end within
#: milliseconds once cancelled, the log's write included), before the ones still running are
#: logged from the event loop (:func:`stop_all`).
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
    """Run ``response`` in a task; ``chunks()`` yields its normalized chunks and its
    reasoning. Made, started and cancelled on the event loop."""

    def __init__(self, response: AsyncResponse, slots: threading.BoundedSemaphore | None = None,
                 on_done: Callable[[Exchange], None] | None = None) -> None:
        self.response = response
        self._slots = slots
        #: Called on the event loop once the response has ended (and been logged).
        self._on_done = on_done
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._cancelled = False
        #: The task that waits for a slot where the model's are all taken, then runs the
        #: response (None until :meth:`start`).
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Exchange:
        """Run the response in a task; where the model's slots are all taken, that task waits
        for one first, in arrival order."""
        slots = self._slots
        holding = slots is None or (not _queued.get(id(slots)) and slots.acquire(blocking=False))
        if not holding:
            assert slots is not None
            _queued.setdefault(id(slots), collections.deque()).append(self)
        self.task = asyncio.get_running_loop().create_task(
            self._run(holding), name=f"llmcli-serve-{self.response.id[:8]}")
        return self

    @property
    def running(self) -> bool:
        """Whether its task has yet to end."""
        return self.task is not None and not self.task.done()

    async def _wait_for_slot(self, slots: threading.BoundedSemaphore) -> bool:
        """Wait for the slot (False: cancelled while waiting)."""
        queue = _queued[id(slots)]
        try:
            while not (queue[0] is self and slots.acquire(blocking=False)):
                if self.cancelled:
                    return False
                await asyncio.sleep(_SLOT_POLL)
        finally:
            queue.remove(self)
        return True

    async def _run(self, holding: bool) -> None:
        slots = self._slots
        try:
            if not holding:
                assert slots is not None
                holding = await self._wait_for_slot(slots)
            if holding:
                try:
                    await self._pump()
                finally:
                    if slots is not None:
                        slots.release()
        except BaseException as exc:  # handed to the reader, which answers with it
            self._put("error", exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._put("end")
        finally:
            if self._on_done is not None:
                self._on_done(self)

    def cancel(self, error: BaseException | None = None) -> None:
        """Stop the response now (it never blocks). With ``error``, whoever reads
        :meth:`chunks` gets it at once, after the chunks already handed over, without waiting
        for the response to wind down (a shutdown's 503)."""
        first = not self._cancelled
        self._cancelled = True
        self.response.cancel()
        if error is not None and first:
            self._put("error", error)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def _put(self, kind: str, value: Any = None) -> None:
        self._queue.put_nowait((kind, value))

    async def _pump(self) -> None:
        if self.cancelled:
            return
        try:
            # The text, and the model's reasoning. A cancelled response ends its iteration
            # itself, having logged what arrived as partial.
            async for chunk in self.response.parts():
                self._put("chunk", chunk)
        finally:
            await self.response.aclose()  # a no-op once it has ended

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
    """Cancel every exchange, give their tasks ``wait`` seconds in all to end (each logs what
    arrived as partial), then log those still running as partial from here. Returns the ones
    that had to be abandoned."""
    for exchange in exchanges:
        exchange.cancel()
    running = {e.task for e in exchanges if e.task is not None and not e.task.done()}
    if running:
        await asyncio.wait(running, timeout=wait)
    stuck = [e for e in exchanges if e.running]

    def abandon() -> None:
        for exchange in stuck:
            exchange.response.abandon()

    if stuck:
        await asyncio.to_thread(abandon)  # log writes may wait: not on the event loop
    return stuck

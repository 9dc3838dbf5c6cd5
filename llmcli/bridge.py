"""A synchronous iterator's items on an event loop, from one worker thread of its own.

The default ``execute_async`` of a model (:meth:`llmcli.contract.Model.execute_async`) runs
its synchronous ``execute`` this way: one thread while the backend runs (the local runtime's
scheduler, a plugin without an async client), its events handed to the event loop as they come.
The thread runs under a :class:`~llmcli.cancel.Cancellation`: when the consumer stops (the task
is cancelled, the iteration closed) the connections the backend made are shut down, the
iterator is closed on its own thread, and the thread ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from llmcli.cancel import Cancellation

__all__ = ["iterate_on_thread"]

_T = TypeVar("_T")


async def iterate_on_thread(make: Callable[[], Iterator[_T]], *,
                            name: str = "llmcli-bridge") -> AsyncIterator[_T]:
    """The items of ``make()``, made and iterated on a new daemon thread named ``name``; an
    exception it raises is raised here, after the items before it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancellation = Cancellation()

    def put(kind: str, value: Any = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

    def pump() -> None:
        iterator: Iterator[_T] | None = None
        try:
            with cancellation.running():
                iterator = make()
                for item in iterator:
                    if cancellation.is_set():
                        break
                    put("item", item)
        except BaseException as exc:  # handed to the event loop, which raises it
            put("error", exc)
        else:
            put("end")
        finally:
            close = getattr(iterator, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()

    thread = threading.Thread(target=pump, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        # The consumer is done (or went away): stop the thread's backend where it waits.
        cancellation.cancel()

"""Continuous batching: one loaded model serves many sequences at once.

A :class:`Scheduler` owns one backend and a worker thread. :meth:`Scheduler.submit` takes a
call (messages, prefill, settings) from any thread: it tokenizes it there (a prompt too long
fails at once, in the caller) and queues it; the caller gets a :class:`Handle` that streams
the text and can be cancelled. The worker loops:

1. **join**: waiting sequences join, oldest first, while fewer than ``max_batch`` run and
   their KV caches fit the ``kv_budget`` (positions, summed over the running sequences;
   a sequence alone always runs). Each joiner's prompt pass runs alone, through
   :func:`llmcli_local.decode.start`: the prefill's split (exact, heal or none) is exactly the
   single-call path's.
2. **pick**: every running sequence picks its next token with its own settings, seed and
   prefill constraint (:class:`llmcli_local.decode.Decoding`), and streams its text
   (UTF-8 safe, stop sequences held back).
3. **leave**: a sequence that ended its turn, met a stop sequence, used its ``max_tokens`` or
   was cancelled leaves; its KV cache is freed and its budget returned.
4. **step**: the rest take one forward step together (:meth:`BatchStep.step_batch
   <llmcli_local.backend.BatchStep.step_batch>`: every weight read once for all rows).

Requests beyond ``max_batch`` or the KV budget wait in the queue (back-pressure): they hold
their token ids, no cache. A single running sequence steps with ``backend.step``, so one
call's output is bit for bit the unbatched loop's; batched rows can differ from a run alone
only in the last bit of a matmul (see ``Decoder.step_batch``), so greedy text differs only
where two tokens tie to within that. What a backend can do beyond
:class:`~llmcli_local.backend.Backend` is read from its protocols: a backend that is no
:class:`~llmcli_local.backend.BatchStep` (transformers) runs one sequence at a time
(``max_batch`` 1), queued the same way; a :class:`~llmcli_local.backend.GraphedSingle`
whose ``graphed_single`` is true (the lean one on CUDA: a CUDA graph of one row) takes a
lone sequence's step through ``step_batch`` too; a :class:`~llmcli_local.backend.Releases`
is told when a sequence leaves (the lean one keeps its prefix and frees its cache's slot in
the static KV pool).

:func:`shared` gives the one scheduler of a loaded model in this process: the in-process
path of ``LocalModel``, ``llmcli batch``'s threads and the keep-alive worker's connections
all submit to it.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmcli.models import Usage
from llmcli_local import decode, speculation
from llmcli_local.backend import Backend, BatchStep, GraphedSingle, Releases
from llmcli_local.config import DEFAULT_KV_BUDGET, DEFAULT_MAX_BATCH, RuntimeConfig
from llmcli_local.openmp import release_team

__all__ = ["CANCELLED", "DEFAULT_KV_BUDGET", "DEFAULT_MAX_BATCH", "Handle", "Scheduler",
           "shared"]

#: A handle's ``stop_reason`` once it was cancelled before its end.
CANCELLED = "cancelled"

_END = object()


class Handle:
    """One submitted sequence. Iterating yields its text chunks, then its :class:`Usage`
    (as :func:`llmcli_local.decode.generate` does), blocking until each is ready; an error
    of its prompt pass or step is raised there. :meth:`cancel` ends it early, from any
    thread; ``stop_reason`` and ``usage`` are set once it has ended."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._items: queue.Queue[Any] = queue.Queue()
        self._cancelled = threading.Event()
        self._ended = threading.Event()
        self.stop_reason: str | None = None
        self.usage: Usage | None = None

    def __iter__(self) -> Handle:
        return self

    def __next__(self) -> str | Usage:
        item = self._items.get()
        if item is _END:
            self._items.put(_END)  # every later next() stops too
            raise StopIteration
        if isinstance(item, BaseException):
            self._items.put(_END)
            raise item
        return item

    def text(self) -> str:
        """Every text chunk (what is left of them), joined; waits for the end."""
        return "".join(c for c in self if isinstance(c, str))

    def cancel(self) -> None:
        """Stop this sequence: it leaves at the next step (or never starts); iteration ends."""
        if not self._ended.is_set():
            self._cancelled.set()
            self._scheduler._wake()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        """Whether the sequence has ended (its last chunk may not have been read yet)."""
        return self._ended.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the sequence has ended; False on timeout."""
        return self._ended.wait(timeout)

    # -- the worker's side
    def _put(self, item: Any) -> None:
        self._items.put(item)

    def _end(self, stop_reason: str, usage: Usage | None = None,
             error: BaseException | None = None) -> None:
        self.stop_reason = stop_reason
        self.usage = usage
        if error is not None:
            self._items.put(error)
        elif usage is not None:
            self._items.put(usage)
        self._items.put(_END)
        self._ended.set()


@dataclass(eq=False)
class _Entry:
    handle: Handle
    backend: Backend[Any]
    prepared: decode.Prepared
    settings: decode.GenerationSettings
    started: float
    sequence: decode.Decoding | None = None
    token: int = -1
    #: The tokens its next pass takes: ``token``, then any a grammar forces after it.
    run: list[int] = field(default_factory=list)
    #: The KV positions reserved for it while it runs.
    reserved: int = field(default=0)
    #: The most sequences it took a decode step with (itself included).
    batch: int = 1


class Scheduler:
    """Runs the sequences submitted to one loaded model, batching their decode steps."""

    def __init__(self, backend: Backend[Any], max_batch: int = DEFAULT_MAX_BATCH,
                 kv_budget: int = DEFAULT_KV_BUDGET) -> None:
        self.backend = backend
        self._batched: BatchStep[Any] | None = (
            backend if isinstance(backend, BatchStep) else None)
        #: Told when a sequence leaves (its prefix kept, its cache's static slot freed).
        self._releases: Releases[Any] | None = (
            backend if isinstance(backend, Releases) else None)
        #: A lone sequence steps through ``step_batch`` too (a CUDA graph of one row).
        self._single = (self._batched is not None and isinstance(backend, GraphedSingle)
                        and backend.graphed_single)
        #: At most this many sequences run together (1 without a batched step).
        self.max_batch = max_batch if self._batched is not None else 1
        #: KV-cache positions the running sequences may hold together.
        self.kv_budget = kv_budget
        self._cond = threading.Condition()
        self._waiting: deque[_Entry] = deque()
        self._reserved = 0
        self._thread: threading.Thread | None = None
        self._running: list[_Entry] = []  # the worker thread's alone
        #: Observed by tests and benchmarks: the most sequences that ever ran together and
        #: the most KV positions they held, the decode steps taken, and how many of them
        #: were batched (two rows or more).
        self.peak_batch = 0
        self.peak_reserved = 0
        self.steps = 0
        self.batched_steps = 0
        #: Which rows speculate each step, and how far (its counters: steps taken with
        #: and without a draft's proposals).
        self.policy = speculation.Policy()

    # -- any thread

    def submit(self, messages: Sequence[Mapping[str, str]], prefill: str,
               settings: decode.GenerationSettings,
               backend: Backend[Any] | None = None) -> Handle:
        """Queue a call and return its handle. Tokenizing happens here, so a prompt the
        model cannot take raises here. ``backend``: a variant of the scheduler's loaded model
        (the same weights; other end-of-turn ids, say), by default the scheduler's own."""
        backend = self.backend if backend is None else backend
        started = time.perf_counter()
        prepared = decode.prepare(backend, messages, prefill, settings)
        # The worker thread computes every step: this thread's idle OpenMP team, if it ran
        # torch before, would take cores from it (llmcli_local.openmp).
        release_team()
        handle = Handle(self)
        with self._cond:
            self._waiting.append(_Entry(handle, backend, prepared, settings, started))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, daemon=True,
                                                name="llmcli-local-scheduler")
                _working.add(self)
                self._thread.start()
            self._cond.notify_all()
        return handle

    def generate(self, messages: Sequence[Mapping[str, str]], prefill: str,
                 settings: decode.GenerationSettings, backend: Backend[Any] | None = None
                 ) -> Generator[str | Usage, None, None]:
        """:func:`llmcli_local.decode.generate` through the scheduler: the same chunks; closing
        the generator early cancels the sequence."""
        handle = self.submit(messages, prefill, settings, backend)
        try:
            yield from handle
        finally:
            handle.cancel()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    @property
    def reserved(self) -> int:
        """KV positions the running sequences hold now."""
        with self._cond:
            return self._reserved

    def shutdown(self, timeout: float | None = None) -> None:
        """Cancel every sequence, waiting or running, and wait for the worker thread to end."""
        with self._cond:
            entries = [*self._waiting, *self._running]
            thread = self._thread
        for entry in entries:
            entry.handle.cancel()
        if thread is not None:
            thread.join(timeout)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- the worker thread

    def _work(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            # A bug of ours, not a call's: fail every sequence rather than leave it hanging.
            with self._cond:
                entries = [*self._running, *self._waiting]
                self._running.clear()
                self._waiting.clear()
                self._reserved = 0
                self._thread = None
                _working.discard(self)
            for entry in entries:
                entry.handle._end("error", error=exc)
            raise

    def _loop(self) -> None:
        while True:
            with self._cond:
                joining = self._admit()
                if not joining and not self._running:
                    # Nothing waits that could run, nothing runs: the thread ends (a
                    # submit starts another).
                    self._thread = None
                    _working.discard(self)
                    return
            for entry in joining:
                self._join(entry)
            self._step()

    def _admit(self) -> list[_Entry]:
        """Waiting sequences that may join now (called holding the lock)."""
        joining: list[_Entry] = []
        while self._waiting and len(self._running) + len(joining) < self.max_batch:
            entry = self._waiting[0]
            if entry.handle.cancelled:
                self._waiting.popleft()
                entry.handle._end(CANCELLED)
                continue
            need = entry.prepared.capacity
            alone = not self._running and not joining
            if not alone and self._reserved + need > self.kv_budget:
                break  # oldest first: later ones wait behind it
            self._waiting.popleft()
            entry.reserved = need
            self._reserved += need
            self.peak_reserved = max(self.peak_reserved, self._reserved)
            joining.append(entry)
        return joining

    def _join(self, entry: _Entry) -> None:
        """The prompt pass, alone, as the single-call path runs it."""
        if entry.handle.cancelled:
            self._leave(entry, CANCELLED)
            return
        try:
            entry.sequence = decode.start(entry.backend, entry.prepared, entry.settings,
                                          entry.started)
        except Exception as exc:  # noqa: BLE001 - the caller's error, raised in its thread
            self._leave(entry, "error", error=exc)
            return
        self._running.append(entry)
        self.peak_batch = max(self.peak_batch, len(self._running))

    def _leave(self, entry: _Entry, reason: str | None = None,
               error: BaseException | None = None) -> None:
        if entry in self._running:
            self._running.remove(entry)
        sequence = entry.sequence
        entry.sequence = None  # its cache goes with it
        if sequence is not None:
            if self._releases is not None:
                self._releases.release(sequence.cache)
            sequence.release_draft()
        with self._cond:
            self._reserved -= entry.reserved
            entry.reserved = 0
        if reason is not None or sequence is None:
            entry.handle._end(reason or "error", error=error)
            return
        tail = sequence.finish()
        if tail:
            entry.handle._put(tail)
        usage = sequence.usage()
        if entry.batch > 1:
            # Only when batched: a lone call's usage is exactly the plain loop's.
            usage.details["batch"] = entry.batch
        entry.handle._end(str(usage.stop_reason), usage)

    def _step(self) -> None:
        moving: list[_Entry] = []
        for entry in list(self._running):
            sequence = entry.sequence
            assert sequence is not None
            if entry.handle.cancelled:
                self._leave(entry, CANCELLED)
                continue
            try:
                entry.run, text = sequence.advance_run(sequence.choose())
                entry.token = entry.run[0]
            except Exception as exc:  # noqa: BLE001
                self._leave(entry, "error", error=exc)
                continue
            if text:
                entry.handle._put(text)
            if sequence.done:
                self._leave(entry)
            else:
                moving.append(entry)
        for entry in [e for e in moving if len(e.run) > 1]:
            # Forced tokens (a grammar): this sequence takes its run in a pass of its own.
            moving.remove(entry)
            try:
                assert entry.sequence is not None
                entry.sequence.step_run(entry.run)
            except Exception as exc:  # noqa: BLE001
                self._leave(entry, "error", error=exc)
        if not moving:
            return
        self.steps += 1
        if len(moving) > 1:
            self.batched_steps += 1
            for entry in moving:
                entry.batch = max(entry.batch, len(moving))
        rows = []
        for entry in moving:
            assert entry.sequence is not None
            rows.append(speculation.Row(entry.sequence, entry.token))
        try:
            # Decide which rows speculate and how far, then one pass for all of them
            # (one row without proposals: the unbatched step, exactly the plain loop's).
            # A lone row runs on its own backend (a variant of the loaded model), several
            # on the scheduler's.
            speculation.step(rows[0].sequence.backend if len(rows) == 1 else self.backend,
                             rows, self.policy, single=self._single)
        except Exception as exc:  # noqa: BLE001 - every sequence of the step fails with it
            for entry in moving:
                if entry.sequence is not None:  # not one that has ended already
                    self._leave(entry, "error", error=exc)
            return
        for entry, row in zip(moving, rows, strict=True):
            if row.text:
                entry.handle._put(row.text)
            if row.sequence.done:
                self._leave(entry)


#: Schedulers whose worker thread runs now.
_working: set[Scheduler] = set()


@atexit.register
def _stop_at_exit() -> None:
    # A daemon thread still inside a torch kernel when the interpreter finalizes aborts the
    # process ("terminate called without an active exception"): a call abandoned at exit is
    # cancelled, and the thread is let end first.
    for scheduler in list(_working):
        scheduler.shutdown(timeout=30)


_shared: weakref.WeakValueDictionary[int, Scheduler] = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


def shared(backend: Backend[Any], config: RuntimeConfig | None = None) -> Scheduler:
    """The scheduler of this loaded model in this process (made on first use, with
    ``config``'s ``max_batch`` and ``kv_budget``; it lives while anything uses it). Variants
    of one model (``dataclasses.replace`` of a backend, transformers' cache options) share
    it, and pass themselves to :meth:`Scheduler.submit`. The loader loads a model again for
    another configuration (:meth:`RuntimeConfig.loaded_key`), so one loaded model's
    scheduler is made with the configuration it was loaded with."""
    weights = backend.loaded_model
    with _shared_lock:
        scheduler = _shared.get(id(weights))
        if scheduler is None or scheduler.backend.loaded_model is not weights:
            config = config or RuntimeConfig()
            scheduler = Scheduler(backend, config.max_batch, config.kv_budget)
            _shared[id(weights)] = scheduler
        return scheduler

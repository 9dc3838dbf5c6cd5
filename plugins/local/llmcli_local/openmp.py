"""One OpenMP thread team on the CPU: the scheduler thread's.

torch's CPU kernels run their parallel loops on OpenMP (GNU libgomp in the Linux wheels).
libgomp keeps a team of worker threads per thread that ever ran a parallel loop: the thread
that loaded the model has one (conversion and quantization ran there), and so does any
caller that ran a torch operation before submitting. Those idle teams count against the
machine's cores: when libgomp manages more threads than there are CPUs, every team stops
spin-waiting between parallel loops and puts its workers to sleep instead, and each loop then
pays a futex wake-up per worker. Measured on the 2-core machine the targets are set on, with
torch's default of one thread per core: a quantized decode step took 28 ms on the scheduler
thread against 9.6 ms on the thread that loaded the model, and the int4/int8 kernels alone
85–95 µs a call against 35 µs (``docs/benchmarks.md``).

:func:`release_team` gives the calling thread's team back (OpenMP 5.0's
``omp_pause_resource_all``, which libgomp implements per thread: the workers of this thread's
pool exit, other threads' teams are untouched; a later parallel loop on this thread starts a
new team). The loader calls it after a load and :meth:`Scheduler.submit
<llmcli_local.scheduler.Scheduler.submit>` after tokenizing, so the thread that computes every
step owns the only team. Without libgomp (macOS, or another OpenMP runtime, whose pause is
process-wide) it does nothing.
"""

from __future__ import annotations

import ctypes
import re
import sys
from collections.abc import Callable

__all__ = ["mappings", "release_team", "runtime"]

#: ``omp_pause_soft``: give the threads back; the runtime starts new ones when needed.
_PAUSE_SOFT = 1
_LIBGOMP = re.compile(r"/libgomp[^/]*\.so[^/]*$")


def mappings() -> list[tuple[int, int, str]]:
    """This process's file mappings: (start, end, path) per line of ``/proc/self/maps``
    that names a file (Linux; elsewhere none)."""
    found = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.rstrip("\n").split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    found.append((start, end, fields[5]))
    except OSError:
        pass
    return found


def runtime() -> str | None:
    """The path of the libgomp this process has loaded (torch's), or None (not yet loaded,
    or none at all)."""
    return next((path for _, _, path in mappings() if _LIBGOMP.search(path)), None)


_found: list[Callable[[int], int] | None] = []


def _pause() -> Callable[[int], int] | None:
    """libgomp's ``omp_pause_resource_all``, looked up once libgomp is loaded."""
    if _found:
        return _found[0]
    path = runtime()
    function: Callable[[int], int] | None = None
    if path is None:
        if "torch" in sys.modules:  # loaded, on another runtime: no need to look again
            _found.append(function)
        return function
    try:
        function = ctypes.CDLL(path).omp_pause_resource_all  # libgomp 9 and later
        function.argtypes = [ctypes.c_int]
        function.restype = ctypes.c_int
    except (OSError, AttributeError):
        function = None
    _found.append(function)
    return function


def release_team() -> bool:
    """Give back the calling thread's OpenMP worker threads, if it has any; True where the
    runtime did (or had nothing to give back). Cheap when there is nothing to release. Call it
    only outside a parallel region and only where torch is loaded."""
    pause = _pause()
    return pause is not None and pause(_PAUSE_SOFT) == 0

"""The scheduler thread owns the only OpenMP team (llmcli_local.openmp): a thread that loaded
the model or submitted a call gives its worker threads back, since idle teams beyond the
machine's cores make libgomp put every team to sleep between parallel loops (a quantized
decode step on the scheduler thread took 3× as long). Each test runs in a fresh interpreter,
where the process's threads can be counted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PREAMBLE = """
import os, sys, threading, time
import torch
from llmcli_local import openmp

torch.set_num_threads(2)  # a team of two: this thread and one worker

def tasks():
    return len(os.listdir("/proc/self/task"))

def settled(expected, timeout=5.0):
    deadline = time.monotonic() + timeout
    while tasks() != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return tasks()

def parallel_loop():
    torch.ones(1 << 22).add_(1)  # far above torch's grain: runs on this thread's team

if openmp.runtime() is None:
    print("no libgomp")
    sys.exit(0)
"""


def _run(body: str, *args: str) -> str:
    script = PREAMBLE + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    if result.stdout.strip() == "no libgomp":
        pytest.skip("torch here does not run on libgomp")
    return result.stdout


def test_release_team_gives_the_threads_workers_back() -> None:
    out = _run("""
        base = tasks()
        parallel_loop()
        with_team = tasks()
        released = openmp.release_team()
        print(base, with_team, released, settled(base))
        parallel_loop()  # a later loop starts a new team
        print(tasks() > base)
    """)
    first, second = out.splitlines()
    base, with_team, released, after = first.split()
    assert int(with_team) > int(base), "the parallel loop started no worker thread"
    assert released == "True"
    assert int(after) == int(base)
    assert second == "True"


def test_loading_and_submitting_leave_the_scheduler_the_only_team(tiny_model_dir: Path
                                                                   ) -> None:
    out = _run("""
        from pathlib import Path

        from llmcli_local import loader
        from llmcli_local.config import RuntimeConfig
        from llmcli_local.decode import GenerationSettings
        from llmcli_local.scheduler import Scheduler
        from llmcli_local.sources import ModelSource

        base = tasks()
        parallel_loop()
        config = RuntimeConfig.build().replace(device="cpu")
        backend = loader.load(ModelSource("hf", Path(sys.argv[1])), config)
        print(settled(base) == base)  # the load gave this thread's team back

        parallel_loop()  # the caller computes something of its own, then calls
        scheduler = Scheduler(backend)
        chunks = list(scheduler.generate([{"role": "user", "content": "Hi"}], "def",
                                         GenerationSettings(max_tokens=4)))
        while scheduler._thread is not None:  # the worker thread ends once idle
            time.sleep(0.01)
        print(type(chunks[-1]).__name__ == "Usage", settled(base) == base)
    """, str(tiny_model_dir))
    assert out.split() == ["True", "True", "True"], out

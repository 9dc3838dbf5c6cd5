"""Every test runs in its own user directory with no installed plugin loaded, unless it asks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmcli import config, plugins


@pytest.fixture(autouse=True, scope="session")
def private_umask() -> Iterator[None]:
    """What the run creates is its owner's alone (umask 077), as llmcli makes its user
    directory (0700) and log (0600): a test that makes a user directory itself does not get
    llmcli's notice that it tightened one in every stderr it checks. The tests of that
    tightening (tests/test_permissions.py) set a looser umask themselves."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture(autouse=True, scope="session")
def no_worker_left_behind() -> Iterator[None]:
    """Keep-alive workers started by the run live in its own run directory (never the
    user's), and are stopped, then killed, when the run ends."""
    # Short on purpose: a Unix socket's path must fit in 107 bytes.
    runtime = tempfile.mkdtemp(prefix="llt", dir="/tmp")
    previous = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = runtime
    try:
        yield
    finally:
        _stop_workers(Path(runtime))
        if previous is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = previous
        shutil.rmtree(runtime, ignore_errors=True)


def _stop_workers(runtime: Path) -> None:
    try:
        from llmcli_local.keepalive import client
    except ImportError:
        return
    directory = runtime / "llmcli"
    pids = []
    for path in sorted(directory.glob("*.sock")) if directory.is_dir() else []:
        answer = client.ask(path, "stop")
        if answer and "worker" in answer:
            pids.append(int(answer["worker"]["pid"]))
    deadline = time.monotonic() + 5
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "user"
    monkeypatch.setenv("LLMCLI_USER_PATH", str(path))
    monkeypatch.setenv("LLMCLI_LOAD_PLUGINS", "")
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "MISTRAL_API_KEY", "ANTHROPIC_BASE_URL",
                "OPENAI_BASE_URL", "MISTRAL_BASE_URL", "LLMCLI_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    # Local models keep a worker alive for 5 minutes by default: never from a test, unless
    # the test asks (-o keep_alive, or its own LLMCLI_LOCAL_KEEP_ALIVE).
    monkeypatch.setenv("LLMCLI_LOCAL_KEEP_ALIVE", "0")
    # serve/batch/chat mark the process long-lived (no keep-alive worker started): for
    # the one command a test runs in process, not for the tests after it.
    monkeypatch.setattr(config, "_long_lived", False)
    plugins.reset(clear_extra=True)
    yield path
    plugins.reset(clear_extra=True)


@pytest.fixture
def load_plugins(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``load_plugins("llmcli-anthropic", ...)``: let these installed plugins load."""

    def load(*names: str) -> None:
        monkeypatch.setenv("LLMCLI_LOAD_PLUGINS", ",".join(names))
        plugins.reset()

    return load


@pytest.fixture
def test_models(load_plugins: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> type:
    """Load the test-only models (test-eats, test-echoes, ...); returns the TestModel class."""
    from llmcli_testmodels import TestModel

    monkeypatch.setenv("LLMCLI_TEST_MODELS", "1")
    load_plugins("llmcli-testmodels")
    TestModel.queue.clear()
    TestModel.requests.clear()
    return TestModel

"""``llmcli serve`` as a real process on a free port, for the tests to drive over HTTP."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.script import SCRIPT, env_for

API_KEY = "serve-secret-key-0123456789"


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str  # http://127.0.0.1:PORT
    user_dir: Path
    stderr: str = ""

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str, str]:
        """Stop the server; its exit status, remaining stdout and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr += err
        return self.proc.returncode, out, self.stderr

    def rows(self) -> list[dict[str, Any]]:
        """The log's responses, oldest first."""
        return logged_rows(self.user_dir)


def logged_rows(user_dir: Path) -> list[dict[str, Any]]:
    """The responses logged in ``user_dir``'s log, oldest first (none before it exists)."""
    path = user_dir / "logs.db"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from responses order by rowid")]


def start_server(user_dir: Path, *args: str, plugins: str = "llmcli-testmodels",
                 preexec_fn: Callable[[], None] | None = None, **env: str) -> Server:
    """``llmcli serve`` on a free port; ``preexec_fn`` runs in the child before it starts
    (a resource limit, say)."""
    environment = env_for(user_dir, LLMCLI_LOAD_PLUGINS=plugins, PYTHONUNBUFFERED="1", **env)
    proc = subprocess.Popen([str(SCRIPT), "serve", "--port", "0", *args], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"listening on (http://127\.0\.0\.1:\d+)/v1", line)
    if not found:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"serve did not start: {line!r} {out!r} {err!r}")
    return Server(proc, found.group(1), user_dir)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server over the test models, with an API key, for a whole module."""
    running = start_server(tmp_path_factory.mktemp("serve") / "user", "--api-key", API_KEY,
                           "-m", "test-eats")
    yield running
    running.stop()


def make_endless_model(directory: Path) -> Path:
    """The tiny test Llama (``tests/local/conftest.py``) with its own output head, whose rows
    for the special tokens are zero: their logit is always 0, below the best one, so greedy
    decoding never ends a turn (and a seeded sample all but never). A context of 6000
    positions: a request for thousands of tokens stays in flight far longer than any test
    needs it to, until its client leaves."""
    import torch
    from transformers import LlamaForCausalLM

    from tests.local.conftest import make_tiny_model

    make_tiny_model(directory)
    model = LlamaForCausalLM.from_pretrained(directory)
    model.config.tie_word_embeddings = False
    model.config.max_position_embeddings = 6000
    with torch.no_grad():
        head = model.model.embed_tokens.weight.detach().clone()
        head[:3] = 0  # <|endoftext|>, <|im_start|>, <|im_end|>
        model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(directory)
    return directory


def register_local_model(user_dir: Path, name: str, directory: Path) -> None:
    """``llmcli local add DIRECTORY --name NAME``, written directly."""
    import json

    user_dir.mkdir(parents=True, exist_ok=True)
    (user_dir / "local-models.json").write_text(json.dumps({"version": 1, "models": [
        {"name": name, "path": str(directory), "format": "hf"}]}))


def wait_for(condition: Callable[[], Any], timeout: float = 15, interval: float = 0.1) -> Any:
    """Poll until ``condition()`` is true and return it (a deadline against hanging, not a
    measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting")


@contextmanager
def serving(timeout: float = 60) -> Iterator[str]:
    """The real application on uvicorn in this process, on a free port (so that a test can
    look inside: a model's scheduler, the process's threads); its URL."""
    import uvicorn

    from llmcli.serve import ServeSettings, create_app
    from llmcli.serve.server import bind

    app = create_app(ServeSettings(say=lambda line: None))
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(app, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=5)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: uv.started or not thread.is_alive(), timeout=timeout, interval=0.05)
        assert uv.started, "the server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uv.should_exit = True
        thread.join(60)
        sock.close()

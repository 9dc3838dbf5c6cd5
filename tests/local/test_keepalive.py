"""Keep-alive workers (``-o keep_alive``): a later call is answered by a background process
that keeps the model loaded, with the same text, no torch in the caller, and every failure
of the worker either invisible (the call runs in process) or a one-line error."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import llmcli
from llmcli.errors import ConfigError, OptionsError, PartialResponseError
from tests.script import SCRIPT, env_for

PREFILL = "def quicksor"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A worker that has exited but whose parent (sh) is gone is reaped by init; a zombie
    # would still answer kill(0), so look at its state too.
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" not in status.read_text()


def _wait(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


class Workers:
    """The run directory of one test, and helpers to drive the installed script there."""

    def __init__(self, runtime: Path, user_dir: Path, model_dir: Path) -> None:
        self.runtime = runtime
        self.user_dir = user_dir
        self.model_dir = model_dir
        self.env = env_for(user_dir, XDG_RUNTIME_DIR=str(runtime),
                           LLMCLI_LOAD_PLUGINS="llmcli-local")

    @property
    def directory(self) -> Path:
        return self.runtime / "llmcli"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(SCRIPT), *args], env=self.env, capture_output=True,
                                text=True, timeout=120)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def ask(self, *extra: str) -> str:
        return self.cli("-m", "tiny", "Hi", "--prefill", PREFILL, "-o", "max_tokens", "8",
                        *extra).stdout

    def sockets(self) -> list[Path]:
        return sorted(self.directory.glob("*.sock")) if self.directory.is_dir() else []

    def ping(self) -> dict[str, Any]:
        """The one running worker's own description of itself, once it has loaded its model
        (waits for it to listen, then to load)."""
        from llmcli_local.keepalive import client

        path = _wait(self.sockets, 60, "the worker's socket")[0]

        def loaded() -> Any:
            answer = client.ask(path, "ping")
            return answer if answer and not answer["worker"]["loading"] else None

        info: dict[str, Any] = _wait(loaded, 60, "the worker's model to load")["worker"]
        return info

    def logged(self) -> list[tuple[str, str]]:
        with sqlite3.connect(self.user_dir / "logs.db") as db:
            return db.execute("select status, text from responses order by datetime_utc"
                              ).fetchall()


@pytest.fixture
def workers(tiny_model_dir: Path, user_dir: Path, load_plugins: Any,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Workers]:
    # Short on purpose: a Unix socket's path must fit in 107 bytes.
    runtime = Path(tempfile.mkdtemp(prefix="llw", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("LLMCLI_LOCAL_KEEP_ALIVE", raising=False)
    load_plugins("llmcli-local")
    from llmcli_local import loader

    loader.unload_all()  # a model loaded here by another test would run in this process
    helper = Workers(runtime, user_dir, tiny_model_dir)
    helper.cli("local", "add", str(tiny_model_dir), "--name", "tiny")
    llmcli.plugins.reset()
    yield helper
    from llmcli_local.keepalive import client

    pids = []
    for path in helper.sockets():
        answer = client.ask(path, "ping")
        if answer and "worker" in answer:  # (a FakeWorker answers anything else)
            pids.append(answer["worker"]["pid"])
    client.stop_all()
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    loader.unload_all()
    shutil.rmtree(runtime, ignore_errors=True)


def test_the_next_call_is_served_by_the_worker_with_the_same_text(workers: Workers) -> None:
    first = workers.ask("-o", "keep_alive", "60")
    assert first.startswith(PREFILL) and len(first) > len(PREFILL) + 1
    info = workers.ping()
    assert info["model"] == "tiny" and info["keep_alive"] == 60 and _alive(info["pid"])
    assert stat_mode(workers.directory) == 0o700
    assert stat_mode(workers.sockets()[0]) == 0o600

    # Through the API in a fresh process: the worker answers, and torch is never imported.
    served = _api_call(workers)
    assert served["text"] + "\n" == first
    assert served["pid"] == info["pid"] and served["tokens"] == 8
    assert served["torch"] is False and served["mode"] == "chars"
    assert workers.ask("-o", "keep_alive", "60") == first
    # The caller still logs every exchange, whoever ran it.
    assert workers.logged() == [("complete", first.rstrip("\n"))] * 3

    listed = workers.cli("local", "workers").stdout
    assert listed == (f"tiny: pid {info['pid']}, cpu, lean engine, exits after 60 s idle\n")
    assert json.loads(workers.cli("local", "workers", "--json").stdout) == [info]
    stopped = workers.cli("local", "stop").stdout
    assert stopped == f"Stopped the worker for tiny (pid {info['pid']})\n"
    _wait(lambda: not _alive(info["pid"]), 10, "the worker to exit")
    assert workers.sockets() == []
    assert workers.cli("local", "stop").stdout == "No keep-alive workers are running\n"
    assert workers.cli("local", "workers").stdout == "No keep-alive workers are running\n"
    assert json.loads(workers.cli("local", "workers", "--json").stdout) == []
    # With keep-alive off nothing is started.
    workers.ask("-o", "keep_alive", "0")
    time.sleep(0.5)
    assert workers.sockets() == []


def _api_call(workers: Workers, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A call through the Python API in a fresh process (with ``env``, by default the
    test's): its text, the pid of the worker that answered (None: none did), its output
    tokens, and whether it imported torch."""
    code = (
        "import json, sys, llmcli\n"
        f"r = llmcli.get_model('tiny').prompt('Hi', prefill={PREFILL!r}, max_tokens=8,"
        " keep_alive='1m')\n"
        "text = r.text()\n"
        "print(json.dumps({'text': text, 'pid': r.usage().details.get('worker_pid'),"
        " 'tokens': r.usage().output_tokens, 'torch': 'torch' in sys.modules,"
        " 'mode': r.usage().details.get('prefill_mode')}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env or workers.env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    served: dict[str, Any] = json.loads(result.stdout)
    return served


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_an_idle_worker_exits_after_the_keep_alive_time(workers: Workers) -> None:
    workers.ask("-o", "keep_alive", "2s")
    info = workers.ping()
    assert info["keep_alive"] == 2
    _wait(lambda: not _alive(info["pid"]), 20, "the idle worker to exit")
    assert workers.sockets() == []


def test_a_killed_worker_is_replaced_and_the_call_runs_in_process(workers: Workers) -> None:
    first = workers.ask("-o", "keep_alive", "60")
    old = workers.ping()["pid"]
    os.kill(old, signal.SIGKILL)
    _wait(lambda: not _alive(old), 10, "the worker to die")
    assert workers.sockets()  # its socket file is left behind, refusing connections
    assert workers.ask("-o", "keep_alive", "60") == first
    new = _wait(lambda: _fresh_pid(workers, old), 60, "a new worker")
    assert new != old and _alive(new)


def test_a_starting_worker_answers_while_its_model_loads(workers: Workers) -> None:
    """A worker listens from its start: a ping says it is loading, and a call made then waits
    for the worker's load rather than loading the model a second time in its own process."""
    from llmcli_local.keepalive import client

    _address(workers).start(60)
    path = _wait(workers.sockets, 30, "the worker's socket")[0]
    # The worker has yet to import torch (over a second) and load: it answers at once.
    first = client.ask(path, "ping")
    assert first is not None and first["worker"]["loading"] is True
    served = _api_call(workers)
    assert served["pid"] == first["worker"]["pid"] and served["text"].startswith(PREFILL)
    assert workers.ping()["loading"] is False


def test_local_stop_stops_a_worker_that_is_still_loading(workers: Workers) -> None:
    from llmcli_local.keepalive import client

    _address(workers).start(60)
    _wait(workers.sockets, 30, "the worker's socket")
    stopped = client.stop_all()
    assert [info["loading"] for info in stopped] == [True]
    _wait(lambda: not _alive(stopped[0]["pid"]), 10, "the loading worker to exit")
    assert workers.sockets() == []
    assert workers.cli("local", "workers").stdout == "No keep-alive workers are running\n"


def _fresh_pid(workers: Workers, old: int) -> int | None:
    from llmcli_local.keepalive import client

    for path in workers.sockets():
        answer = client.ask(path, "ping")
        if answer and answer["worker"]["pid"] != old:
            return int(answer["worker"]["pid"])
    return None


def _address(workers: Workers) -> Any:
    from llmcli_local.config import RuntimeConfig
    from llmcli_local.keepalive.client import WorkerAddress
    from llmcli_local.sources import ModelSource

    # The configuration the CLI builds from its environment: the key of its worker.
    address = WorkerAddress.for_model("tiny", ModelSource("hf", workers.model_dir),
                                      RuntimeConfig.build(environ=workers.env))
    assert address is not None
    return address


def test_a_client_that_goes_away_does_not_stop_the_worker(workers: Workers) -> None:
    import dataclasses

    from llmcli_local.config import GenerationSettings, RuntimeConfig

    workers.ask("-o", "keep_alive", "60")
    pid = workers.ping()["pid"]
    # The running worker's own socket (a key computed now would change with any code edit).
    address = dataclasses.replace(_address(workers), key=workers.sockets()[0].stem)
    # Greedy, the tiny random model writes all 500 tokens (it never picks its end of turn).
    settings = GenerationSettings(max_tokens=500)
    messages = [{"role": "user", "content": "Hi"}]
    chunks = address.request(messages, PREFILL, settings, RuntimeConfig(), 60)
    assert chunks is not None
    assert isinstance(next(chunks), str)
    chunks.close()  # Ctrl-C in the caller: the socket closes mid-reply
    again = address.request(messages, PREFILL, GenerationSettings(max_tokens=4),
                            RuntimeConfig(), 60)
    assert again is not None
    usage = [c for c in again if not isinstance(c, str)][0]
    assert usage.output_tokens == 4 and usage.details["worker_pid"] == pid


class FakeWorker:
    """Listens on a job's socket and answers each request with fixed lines, then hangs up."""

    def __init__(self, path: Path, lines: list[dict[str, Any]]) -> None:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path = path
        self.server.bind(str(path))
        self.server.listen(1)
        self.lines = lines
        self.requests: list[dict[str, Any]] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would leave the
        # socket listening until that accept returned.
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.path.unlink(missing_ok=True)

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), conn, conn.makefile("rb") as reader:
                self.requests.append(json.loads(reader.readline()))
                for line in self.lines:
                    conn.sendall(json.dumps(line).encode() + b"\n")


@pytest.fixture
def fake_worker(workers: Workers) -> Iterator[Callable[[list[dict[str, Any]]], FakeWorker]]:
    made: list[FakeWorker] = []

    def make(lines: list[dict[str, Any]]) -> FakeWorker:
        made.append(FakeWorker(_address(workers).socket_path, lines))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def test_a_worker_dying_mid_reply_is_a_partial_response(
    workers: Workers, fake_worker: Callable[[list[dict[str, Any]]], FakeWorker]
) -> None:
    fake = fake_worker([{"t": "t(arr):"}, {"t": "\n"}])
    response = llmcli.get_model("tiny").prompt("Hi", prefill=PREFILL, keep_alive=60)
    with pytest.raises(PartialResponseError, match="worker stopped before the reply"):
        response.text()
    assert response.status == "partial"
    assert workers.logged() == [("partial", PREFILL + "t(arr):\n")]
    request = fake.requests[0]
    assert request["prefill"] == PREFILL and request["messages"][-1]["content"] == "Hi"
    assert request["settings"]["max_tokens"] == 256 and request["keep_alive"] == 60


def test_a_worker_error_is_the_same_one_line_error(
    fake_worker: Callable[[list[dict[str, Any]]], FakeWorker]
) -> None:
    fake_worker([{"e": {"type": "ConfigError", "message": "The prompt is 9 tokens; ..."}}])
    with pytest.raises(ConfigError, match="The prompt is 9 tokens"):
        llmcli.get_model("tiny").prompt("Hi", keep_alive=60).text()


def test_a_run_directory_others_can_read_is_never_used(workers: Workers) -> None:
    from llmcli_local.keepalive.protocol import run_dir

    workers.directory.mkdir(mode=0o755)
    workers.directory.chmod(0o755)
    assert run_dir() is None
    text = workers.ask("-o", "keep_alive", "60")
    assert text.startswith(PREFILL)  # ran in process
    time.sleep(1)
    assert workers.sockets() == []


def test_the_worker_key_follows_the_weights(workers: Workers, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcli_local.config import RuntimeConfig
    from llmcli_local.keepalive.client import WorkerAddress
    from llmcli_local.options import LocalOptions
    from llmcli_local.sources import ModelSource

    model = tmp_path / "model"
    shutil.copytree(workers.model_dir, model)

    def key(device: str = "auto", **options: Any) -> str:
        # As a call makes it: its options and the environment, read once.
        config = RuntimeConfig.build(LocalOptions(device=device, **options))
        address = WorkerAddress.for_model("m", ModelSource("hf", model), config)
        assert address is not None
        return str(address.key)

    first = key()
    assert first == key()
    assert first != key("cpu")
    # The backend, as choose_backend decides it (the environment variable included).
    assert first != key(engine="transformers") == key(kv_cache="static")
    monkeypatch.setenv("LLMCLI_LOCAL_ENGINE", "transformers")
    assert key() == key(engine="transformers")
    monkeypatch.delenv("LLMCLI_LOCAL_ENGINE")
    # Whether the worker loads a speculative draft.
    monkeypatch.setenv("LLMCLI_LOCAL_DRAFT", "none")
    assert key() != first
    monkeypatch.delenv("LLMCLI_LOCAL_DRAFT")
    assert key() == first
    # Every setting of the configuration is part of the key (a running worker keeps the
    # batch, the caches and the pools it started with), the quantized weights included.
    assert key(quantize="int8") not in (first, key(quantize="int4"))
    for name, value in (("LLMCLI_LOCAL_MAX_BATCH", "3"), ("LLMCLI_LOCAL_KV_BUDGET", "512"),
                        ("LLMCLI_LOCAL_PREFIX_CACHE", "0"), ("LLMCLI_LOCAL_PREFIX_CACHE", "99"),
                        ("LLMCLI_LOCAL_STATIC_BATCH", "1"), ("LLMCLI_LOCAL_STATIC_BATCH", "0"),
                        ("LLMCLI_LOCAL_STATIC_LENGTH", "512"), ("LLMCLI_LOCAL_THREADS", "1"),
                        ("LLMCLI_LOCAL_DRAFT", "int8"),
                        ("LLMCLI_LOCAL_CACHE", str(tmp_path / "elsewhere"))):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            assert key() != first, name
    assert key() == first
    weights = next(model.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert first != key()


@pytest.mark.parametrize(("name", "value"), [("LLMCLI_LOCAL_PREFIX_CACHE", "0"),
                                             ("LLMCLI_LOCAL_MAX_BATCH", "3")])
def test_a_worker_is_not_reused_under_another_setting(workers: Workers, name: str,
                                                      value: str) -> None:
    """A worker keeps the prefix cache, the batch size (and static batch) it was started
    with: a call made under another setting is not served by it. It runs in its own process
    and starts a worker of its own, and from then on each setting reaches its own worker."""
    workers.ask("-o", "keep_alive", "60")
    old = workers.ping()["pid"]
    plain = _api_call(workers)
    assert plain["pid"] == old
    changed = {**workers.env, name: value}
    first = _api_call(workers, changed)
    assert first["pid"] is None  # not the running worker: in process
    assert first["text"] == plain["text"]
    new = _wait(lambda: _fresh_pid(workers, old), 60, "the other setting's worker")
    assert len(workers.sockets()) == 2
    assert _api_call(workers, changed)["pid"] == new
    assert _api_call(workers)["pid"] == old


def test_keep_alive_durations(load_plugins: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    load_plugins("llmcli-local")
    model = llmcli.get_model("smollm2")
    for given, seconds in (("5m", 300), ("90s", 90), ("1h", 3600), ("0", 0), (30, 30),
                           ("2.5", 2.5)):
        assert model.Options(keep_alive=given).keep_alive == seconds
    monkeypatch.delenv("LLMCLI_LOCAL_KEEP_ALIVE")
    assert model.Options().keep_alive == 300  # five minutes, as Ollama
    monkeypatch.setenv("LLMCLI_LOCAL_KEEP_ALIVE", "0")
    assert model.Options().keep_alive == 0
    for bad in ("soon", "-1", "9999h", True):
        with pytest.raises(OptionsError, match="keep_alive"):
            model.prompt("hi", keep_alive=bad)
    monkeypatch.setenv("LLMCLI_LOCAL_KEEP_ALIVE", "2m")
    assert model.Options().keep_alive == 120
    monkeypatch.setenv("LLMCLI_LOCAL_KEEP_ALIVE", "later")
    with pytest.raises(OptionsError, match="keep_alive"):
        model.prompt("hi")


def test_a_run_directory_too_deep_for_a_socket_is_not_used(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmcli_local.config import RuntimeConfig
    from llmcli_local.keepalive.client import WorkerAddress
    from llmcli_local.sources import ModelSource

    source = ModelSource("hf", tiny_model_dir)
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    assert WorkerAddress.for_model("tiny", source, RuntimeConfig()) is None
    short = tempfile.mkdtemp(prefix="llw", dir="/tmp")
    monkeypatch.setenv("XDG_RUNTIME_DIR", short)
    try:
        assert WorkerAddress.for_model("tiny", source, RuntimeConfig())
    finally:
        shutil.rmtree(short)


def test_keep_alive_is_on_by_default_for_five_minutes(workers: Workers) -> None:
    """A user who sets nothing gets a worker that stays for 5 minutes; the test suite itself
    runs with LLMCLI_LOCAL_KEEP_ALIVE=0 (tests/script.py), so its calls start none."""
    workers.ask()
    time.sleep(0.5)
    assert workers.sockets() == []  # the suite's default: off
    del workers.env["LLMCLI_LOCAL_KEEP_ALIVE"]
    first = workers.ask()
    info = workers.ping()
    assert info["keep_alive"] == 300
    assert workers.ask() == first


def test_concurrent_clients_are_batched_by_the_worker(workers: Workers) -> None:
    """Several callers at once: the worker serves them together (their decode steps batched
    by its scheduler) instead of one after the other, with the text each gets alone."""
    import dataclasses

    from llmcli_local.config import GenerationSettings, RuntimeConfig

    workers.ask("-o", "keep_alive", "60")
    pid = workers.ping()["pid"]
    # The running worker's own socket (a key computed now would change with any code edit).
    address = dataclasses.replace(_address(workers), key=workers.sockets()[0].stem)
    messages = [{"role": "user", "content": "Hi"}]
    prefills = ["def quicksor", "The URL is http:", '["Cal', "This is a te"]

    def ask(prefill: str) -> tuple[str, Any]:
        chunks = address.request(messages, prefill, GenerationSettings(max_tokens=60),
                                 RuntimeConfig(), 60)
        assert chunks is not None
        got = list(chunks)
        return "".join(c for c in got if isinstance(c, str)), got[-1]

    alone = [ask(prefill) for prefill in prefills]
    assert all("batch" not in usage.details for _, usage in alone)
    results: dict[int, tuple[str, Any]] = {}
    barrier = threading.Barrier(len(prefills))

    def call(i: int) -> None:
        barrier.wait()
        results[i] = ask(prefills[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prefills))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    together = [results[i] for i in range(len(prefills))]
    assert [text for text, _ in together] == [text for text, _ in alone]
    assert all(usage.details["worker_pid"] == pid for _, usage in together)
    assert max(usage.details.get("batch", 1) for _, usage in together) >= 2


def test_a_batch_keeps_the_model_itself_and_starts_no_worker(workers: Workers,
                                                              tmp_path: Path) -> None:
    """``llmcli batch`` (like serve and chat) makes many calls in one process and keeps the
    model loaded there: a keep-alive worker would be a second copy of it."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hi"}\n{"prompt": "Hello"}\n')
    out = tmp_path / "out.jsonl"
    workers.cli("batch", str(prompts), "--output", str(out), "-m", "tiny", "--prefill", PREFILL,
                "-o", "max_tokens", "4", "-o", "keep_alive", "60")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2 and all(line["text"].startswith(PREFILL) for line in lines)
    time.sleep(1.0)
    assert workers.sockets() == []
    # A single call still starts one, for the calls to come; a batch then uses it.
    workers.ask("-o", "keep_alive", "60")
    pid = workers.ping()["pid"]
    workers.cli("batch", str(prompts), "--output", str(tmp_path / "again.jsonl"), "-m", "tiny",
                "--prefill", PREFILL, "-o", "max_tokens", "4", "-o", "keep_alive", "60")
    again = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert [line["text"] for line in again] == [line["text"] for line in lines]
    assert [p["pid"] for p in [workers.ping()]] == [pid] and len(workers.sockets()) == 1

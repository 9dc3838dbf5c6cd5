"""``llmcli serve`` in front of people: an upstream that never answers is let go of when its
client leaves or the server stops (within ``--grace``), a log that fails never costs a reply,
and a log that cannot be written refuses the start. Real processes throughout: ``llmcli
serve`` on a free port, the official SDKs, an upstream that says nothing
(tests/fakes/silent.py), and a log whose writes really fail (a file size limit, which root is
held to as well)."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.silent import SilentUpstream, openai_chunk
from tests.script import SCRIPT, env_for
from tests.serve.conftest import Server, start_server, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

OPENAI_KEY = "sk-openai-test-0123456789abcdef"


def behind_silent(upstream: SilentUpstream, user_dir: Path, *args: str) -> Server:
    return start_server(user_dir, *args, plugins="llmcli-openai",
                        OPENAI_BASE_URL=upstream.url + "/v1", OPENAI_API_KEY=OPENAI_KEY)


def ask(server: Server, prompt: str, stream: bool, timeout: float) -> httpx.Response:
    return httpx.post(server.v1 + "/chat/completions", timeout=timeout, json={
        "model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": prompt}]})


def leave_once_asked(server: Server, upstream: SilentUpstream, prompt: str,
                     stream: bool) -> None:
    """A client that sends its request and leaves (closes its connection) once the upstream
    has been asked, however long the server took to get there (on a loaded machine its
    first request imports the provider's SDK: a client timeout could end before that)."""
    url = httpx.URL(server.v1)
    body = json.dumps({"model": "gpt-4o", "stream": stream,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    head = (f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    with socket.create_connection((url.host, url.port)) as client:
        client.sendall(head.encode() + body)
        upstream.wait(lambda: upstream.requests, timeout=60)


# -- an upstream that never answers ---------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_client_that_leaves_lets_go_of_a_silent_upstream(tmp_path: Path,
                                                            stream: bool) -> None:
    with SilentUpstream() as upstream:
        server = behind_silent(upstream, tmp_path / "user")
        try:
            leave_once_asked(server, upstream, "anyone there?", stream)
            # The upstream request is cancelled at once, not after the SDK's timeout: its
            # connection closes and the exchange is logged.
            upstream.wait(lambda: upstream.open == 0, timeout=5)
            [row] = wait_for(server.rows, timeout=5)
            assert (row["prompt"], row["status"], row["error"]) == ("anyone there?",
                                                                    "partial", "interrupted")
            assert upstream.accepted == 1
        finally:
            code, _, err = server.stop()
        assert code == 0 and "Traceback" not in err


def test_sigterm_stops_within_grace_with_silent_upstreams_in_flight(tmp_path: Path) -> None:
    """Three requests wait on an upstream that never answers (one mid-stream); SIGTERM with
    --grace 1: the process is gone within grace + 2 s, 'stopped' is its last word, each
    request is logged as partial, and no upstream connection is left open."""
    with SilentUpstream(prefix=[openai_chunk("Half a")]) as upstream:
        server = behind_silent(upstream, tmp_path / "user", "--grace", "1")
        answers: list[Any] = []

        def client(prompt: str, stream: bool) -> None:
            try:
                answers.append(ask(server, prompt, stream, timeout=30))
            except httpx.HTTPError as exc:  # a cut connection is a fine answer here too
                answers.append(exc)

        threads = [threading.Thread(target=client, args=(f"request {i}", i % 2 == 0))
                   for i in range(3)]
        for thread in threads:
            thread.start()
        upstream.wait(lambda: len(upstream.requests) == 3)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        out, err = server.proc.communicate(timeout=30)
        elapsed = time.monotonic() - started
        for thread in threads:
            thread.join(10)
        upstream.wait(lambda: upstream.open == 0, timeout=5)
    assert server.proc.returncode == 0, err
    assert elapsed < 1 + 2, elapsed
    assert out.splitlines()[-1] == "llmcli serve: stopped"
    assert "Traceback" not in err
    rows = server.rows()
    assert sorted(r["prompt"] for r in rows) == [f"request {i}" for i in range(3)]
    assert {(r["status"], r["error"]) for r in rows} == {("partial", "interrupted")}
    assert len(answers) == 3
    for answer in answers:  # a 503 (or a stream that ends with an error event), never a 200
        if isinstance(answer, httpx.Response) and answer.status_code == 200:
            assert '"shutting_down"' in answer.text


# -- a log that fails ---------------------------------------------------------------------------


def file_size_limit(limit: int) -> Callable[[], None]:
    """For the child: no file written past ``limit`` bytes (EFBIG: SQLite's "disk I/O
    error"), as a full disk would stop it; root is held to it too."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def a_log_with_one_row(user_dir: Path) -> int:
    """The log as the CLI leaves it after one prompt; its size."""
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    subprocess.run([str(SCRIPT), "-m", "test-eats", "first"], env=env, check=True,
                   capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    return (user_dir / "logs.db").stat().st_size


#: A system prompt too big to log under the limit below.
BIG = "lorem ipsum " * 60_000


def test_a_log_that_fails_never_costs_the_reply(tmp_path: Path) -> None:
    user = tmp_path / "user"
    size = a_log_with_one_row(user)
    server = start_server(user, "-m", "test-eats",
                          preexec_fn=file_size_limit(size + 256 * 1024))
    try:
        oai = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
        messages: Any = [{"role": "system", "content": BIG},
                         {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "P:", "prefix": True}]
        whole = oai.chat.completions.create(model="test-eats", messages=messages)
        assert whole.choices[0].message.content == "reply to: hi"
        streamed = "".join(c.choices[0].delta.content or "" for c in oai.chat.completions.create(
            model="test-eats", messages=messages, stream=True) if c.choices)
        assert streamed == "reply to: hi"
        claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)
        message: Any = claude.messages.create(
            model="test-eats", max_tokens=50, system=BIG,
            messages=[{"role": "user", "content": "hi"}])
        assert message.content[0].text == "reply to: hi"
        with claude.messages.stream(model="test-eats", max_tokens=50, system=BIG,
                                    messages=[{"role": "user", "content": "hi"}]) as events:
            assert "".join(events.text_stream) == "reply to: hi"
        # The log still takes what fits: nothing is lost that could be kept.
        small = oai.chat.completions.create(
            model="test-eats", messages=[{"role": "user", "content": "small"}])
        assert small.choices[0].message.content == "reply to: small"
        rows = wait_for(lambda: len(server.rows()) == 2 and server.rows())
    finally:
        code, _, err = server.stop()
    assert code == 0
    assert [r["prompt"] for r in rows] == ["first", "small"]
    warnings = [line for line in err.splitlines() if "was not logged" in line]
    assert len(warnings) == 4, err
    assert all(line.startswith("llmcli serve: warning: ") and "disk I/O error" in line
               for line in warnings)
    assert "Traceback" not in err


def serve_once(user_dir: Path, *args: str, preexec_fn: Callable[[], None] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """``llmcli serve`` expected to refuse to start (killed after 20 s if it starts)."""
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    return subprocess.run([str(SCRIPT), "serve", "--port", "0", "-m", "test-eats", *args],
                          env=env, capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)


def test_a_log_that_cannot_be_written_refuses_the_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    refused = serve_once(blocker / "user")
    assert refused.returncode == 1
    assert refused.stdout == ""  # it never listened
    assert refused.stderr.startswith("Error: Cannot create the user directory ")
    assert refused.stderr.strip().endswith("; pass -n to serve without logging")
    assert len(refused.stderr.strip().splitlines()) == 1
    # With -n nothing needs writing: it starts.
    server = start_server(blocker / "user", "-n", "-m", "test-eats")
    reply = httpx.post(server.v1 + "/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200
    assert server.stop()[0] == 0


def test_a_full_disk_at_start_refuses_the_start(tmp_path: Path) -> None:
    user = tmp_path / "user"
    a_log_with_one_row(user)
    refused = serve_once(user, preexec_fn=file_size_limit(0))
    assert refused.returncode == 1, refused.stderr
    assert refused.stdout == ""
    assert refused.stderr.startswith("Error: ")
    assert str(user / "logs.db") in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "Traceback" not in refused.stderr


# -- keys -----------------------------------------------------------------------------------

PLANTED = "sk-PLANTED-serve-7f3a9c2e1b"


def test_a_planted_key_never_leaves_the_server(tmp_path: Path) -> None:
    """A provider that repeats this server's key in its error: not in the HTTP answer, the
    server's stderr or the log."""
    user = tmp_path / "user"
    env = env_for(user, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    for args in (["keys", "set", "testkey", "--value", PLANTED],
                 ["models", "options", "set", "test-keyed", "leak_key", "true"]):
        subprocess.run([str(SCRIPT), *args], env=env, check=True, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    server = start_server(user, "-m", "test-keyed")
    try:
        for stream in (False, True):
            reply = httpx.post(server.v1 + "/chat/completions", timeout=30, json={
                "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
            assert reply.status_code == 502
            assert "[REDACTED]" in reply.text and PLANTED not in reply.text
        rows = wait_for(lambda: len(server.rows()) == 2 and server.rows())
    finally:
        code, out, err = server.stop()
    assert code == 0
    assert PLANTED not in out + err
    assert all(PLANTED not in str(row) for row in rows)


def test_a_backend_no_cancellation_reaches_is_logged_at_shutdown_and_not_waited_for(
        tmp_path: Path) -> None:
    """The test model sleeps before each chunk (no socket to shut down), on the thread that
    bridges it to the event loop: at the end of the grace period the client gets its 503, the
    response ends at once all the same (its task stops waiting for the thread) and is logged
    as partial, and the process does not wait for the sleeping thread. (A task that did not
    end is logged by stop_all: tests/serve/test_exchange.py.)"""
    user = tmp_path / "user"
    env = env_for(user, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    subprocess.run([str(SCRIPT), "models", "options", "set", "test-eats", "delay", "10"],
                   env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL,
                   timeout=60)
    server = start_server(user, "-m", "test-eats", "--grace", "0")
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(httpx.post(
        server.v1 + "/chat/completions", timeout=30,
        json={"messages": [{"role": "user", "content": "sleepy"}]})))
    thread.start()
    time.sleep(1.0)  # the exchange is asleep in its backend
    started = time.monotonic()
    code, out, err = server.stop()
    elapsed = time.monotonic() - started
    thread.join(10)
    assert code == 0 and elapsed < 0 + 2, (elapsed, err)
    assert out.splitlines()[-1] == "llmcli serve: stopped"
    [answer] = answers
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down"
    [row] = server.rows()
    assert (row["prompt"], row["status"], row["error"]) == ("sleepy", "partial",
                                                            "interrupted")
    assert "partial (0 characters, interrupted)" in err  # the response's own ending
    assert "Traceback" not in err


def test_a_request_uvicorn_cancels_at_its_deadline_still_gets_an_answer() -> None:
    """The last resort: a request still running when uvicorn cancels it (a second after the
    grace period) ends with SHUTTING_DOWN in its wire's shape, not a traceback."""
    from llmcli.serve.server import _AnswerWhenCancelled

    async def run(path: str, stream: bool | None) -> list[dict[str, Any]]:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            if stream is not None:
                kind = b"text/event-stream" if stream else b"application/json"
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", kind)]})
                await send({"type": "http.response.body", "body": b"data: {}\n\n",
                            "more_body": True})
            await asyncio.sleep(3600)

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        task = asyncio.create_task(_AnswerWhenCancelled(app)(
            {"type": "http", "path": path}, None, send))
        await asyncio.sleep(0.05)
        task.cancel()
        await task  # answered, not re-raised
        return sent

    before = asyncio.run(run("/v1/chat/completions", None))
    assert before[0]["status"] == 503
    assert json.loads(before[1]["body"])["error"]["code"] == "shutting_down"
    streamed = asyncio.run(run("/v1/chat/completions", True))
    assert streamed[-1]["body"].endswith(b"data: [DONE]\n\n")
    assert b'"shutting_down"' in streamed[-1]["body"] and not streamed[-1]["more_body"]
    claude = asyncio.run(run("/v1/messages", True))
    assert claude[-1]["body"].startswith(b"event: error\n")
    assert b"overloaded_error" in claude[-1]["body"]

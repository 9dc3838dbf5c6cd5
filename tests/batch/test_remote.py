"""``llmcli batch`` against OpenAI-compatible (vLLM-style) fake servers over real HTTP, through
the installed command: concurrency against one endpoint, a group spread round-robin, back-off
on 429 with Retry-After, a slow endpoint and one that dies mid-run."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llmcli.batch import retryable
from llmcli.errors import OptionsError, ProviderError
from tests.fakes.batch import BatchServer, rate_limited, write_servers
from tests.script import SCRIPT, env_for

PREFILL = '{"answer": '
CONTINUATION = " and the rest of the reply."


def run_batch(user_dir: Path, *args: str, timeout: float = 120) -> Any:
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-openai")
    return subprocess.run([str(SCRIPT), "batch", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def prompts(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}"}) + "\n"
                            for i in range(count)))
    return path


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def servers() -> Iterator[list[BatchServer]]:
    started: list[BatchServer] = []
    yield started
    for server in started:
        server.stop()


def start(started: list[BatchServer], **kwargs: Any) -> BatchServer:
    server = BatchServer(continuation=CONTINUATION, **kwargs).start()
    started.append(server)
    return server


def test_many_requests_at_once_against_one_endpoint(user_dir: Path, tmp_path: Path,
                                                    servers: list[BatchServer]) -> None:
    fake = start(servers, chunk_delay=0.05)
    write_servers(user_dir / "openai-servers.json", vllm=fake)
    out = tmp_path / "out.jsonl"
    result = run_batch(user_dir, str(prompts(tmp_path / "in.jsonl", 12)), "--output", str(out),
                       "-m", "vllm", "--prefill", PREFILL, "-j", "6")
    assert result.returncode == 0, result.stderr
    found = rows(out)
    assert len(found) == 12
    assert all(r["text"] == PREFILL + CONTINUATION for r in found)  # eaten: once, exactly
    assert all(r["usage"]["output_tokens"] == 7 for r in found)
    assert fake.in_flight_max >= 4  # -j 6 really runs requests side by side
    body = fake.chat_requests[0].body
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


@pytest.mark.parametrize("spec", [["-m", "a,b"], ["-m", "a", "-m", "b"]])
def test_a_group_is_spread_round_robin(user_dir: Path, tmp_path: Path,
                                       servers: list[BatchServer], spec: list[str]) -> None:
    a, b = start(servers), start(servers)
    write_servers(user_dir / "openai-servers.json", a=a, b=b)
    out = tmp_path / "out.jsonl"
    result = run_batch(user_dir, str(prompts(tmp_path / "in.jsonl", 8)), "--output", str(out),
                       *spec, "--prefill", PREFILL, "-j", "1")
    assert result.returncode == 0, result.stderr
    assert len(a.chat_requests) == len(b.chat_requests) == 4
    assert [r["model"] for r in rows(out)] == ["a", "b"] * 4


def test_rate_limits_back_off_instead_of_failing(user_dir: Path, tmp_path: Path,
                                                 servers: list[BatchServer]) -> None:
    fake = start(servers)
    fake.enqueue(rate_limited("1"), rate_limited("1"), rate_limited("0"))
    write_servers(user_dir / "openai-servers.json", vllm=fake)
    out = tmp_path / "out.jsonl"
    began = time.monotonic()
    # max_retries 0: the SDK gives up at once, so the back-off seen is the batch's own.
    result = run_batch(user_dir, str(prompts(tmp_path / "in.jsonl", 2)), "--output", str(out),
                       "-m", "vllm", "-o", "max_retries", "0", "-j", "1")
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    found = rows(out)
    assert [r["status"] for r in found] == ["ok", "ok"]
    assert found[0]["attempts"] == 4 and found[1]["attempts"] == 1
    assert len(fake.chat_requests) == 5
    assert took >= 2.0  # Retry-After: 1, twice, was waited for


def test_a_server_that_dies_mid_run_hands_its_lines_to_the_group(
        user_dir: Path, tmp_path: Path, servers: list[BatchServer]) -> None:
    dying = start(servers, chunk_delay=0.02, die_after=2)
    healthy = start(servers, chunk_delay=0.02)
    write_servers(user_dir / "openai-servers.json", dying=dying, healthy=healthy)
    out = tmp_path / "out.jsonl"
    result = run_batch(user_dir, str(prompts(tmp_path / "in.jsonl", 10)), "--output", str(out),
                       "-m", "dying,healthy", "--prefill", PREFILL, "-j", "2",
                       "-o", "max_retries", "0")
    assert result.returncode == 0, result.stderr
    found = rows(out)
    assert len(found) == 10 and all(r["status"] == "ok" for r in found)
    assert all(r["text"] == PREFILL + CONTINUATION for r in found)
    assert {r["model"] for r in found} == {"dying", "healthy"}
    assert sum(r["attempts"] > 1 for r in found) >= 1  # a broken stream was asked again


def test_a_single_dead_server_fails_its_lines_after_a_few_attempts(
        user_dir: Path, tmp_path: Path, servers: list[BatchServer]) -> None:
    gone = start(servers)
    url = gone.url + "/v1"
    gone.stop()
    write_servers(user_dir / "openai-servers.json", gone=url)
    out = tmp_path / "out.jsonl"
    result = run_batch(user_dir, str(prompts(tmp_path / "in.jsonl", 2)), "--output", str(out),
                       "-m", "gone", "-o", "max_retries", "0")
    assert result.returncode == 1
    found = rows(out)
    assert [r["status"] for r in found] == ["error", "error"]
    assert all(r["attempts"] == 3 and r["error"].startswith(f"line {r['line']}: ")
               for r in found)
    assert result.stderr.startswith("0 ok, 2 failed in ")


def test_retryable_reads_retry_after_from_the_sdk_error_it_wraps() -> None:
    sdk_error = Exception("429")
    sdk_error.response = SimpleNamespace(headers={"retry-after": "7"})  # type: ignore[attr-defined]
    wrapped = ProviderError("rate limited", status=429)
    wrapped.__cause__ = sdk_error
    assert retryable(wrapped, 1) == (True, 7.0)
    assert retryable(wrapped, 8) == (False, None)  # patience has a limit
    assert retryable(ProviderError("bad request", status=400), 1) == (False, None)
    assert retryable(ProviderError("connection refused"), 1) == (True, None)
    assert retryable(ProviderError("connection refused"), 3) == (False, None)
    assert retryable(OptionsError("bad option"), 1) == (False, None)

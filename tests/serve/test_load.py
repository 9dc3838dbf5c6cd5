"""A bounded load test, on loopback only: 200 concurrent streaming clients (the official
openai SDK, asyncio) against ``llmcli serve`` in a subprocess, in front of two fake
OpenAI-compatible servers that stream slowly; 10% of the clients leave mid-stream, then a
SIGTERM lands while half of the streams are still running.

Nothing is lost: every request is logged, complete or partial; each client that left, and
each stream the shutdown cut short, is let go of upstream (no upstream stream is left open);
the clients cut short get an error event, not a stream that looks finished; the process exits
within --grace + 2 s. The larger version, with memory and thread figures, is
tests/bench/bench_serve_load.py."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.batch import BatchServer, write_servers
from tests.serve.conftest import Server, start_server, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CLIENTS = 200
#: Clients of the fast model finish before the SIGTERM; the others (a tenth of all
#: clients leave early) are still streaming when it comes.
FAST, LEAVING = 80, 20
GRACE = 1
TEXT = " and the rest of the reply."


async def one_client(client: openai.AsyncOpenAI, n: int) -> tuple[str, str]:
    """(kind, outcome) of client ``n``: "complete", "left" or "cut" (an error event)."""
    kind = "fast" if n < FAST else "leaving" if n < FAST + LEAVING else "slow"
    text = ""
    try:
        # A 503 here (the stream had not begun when the grace period ended) is cut too.
        stream = await client.chat.completions.create(
            model="fast" if kind == "fast" else "slow", stream=True,
            messages=[{"role": "user", "content": f"client {n} ({kind})"},
                      {"role": "assistant", "content": "Well,", "prefix": True}])
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if kind == "leaving" and len(text) >= 8:
                await stream.close()  # the client goes away mid-stream
                return kind, "left"
    except openai.APIError as exc:
        body: Any = exc.body
        assert isinstance(body, dict) and body.get("code") == "shutting_down", exc
        return kind, "cut"
    assert text == TEXT, text
    return kind, "complete"


async def load(server: Server, fast: BatchServer, slow: BatchServer) -> tuple[list[Any], float]:
    client = openai.AsyncOpenAI(base_url=server.v1, api_key="unused", max_retries=0,
                                timeout=60)
    tasks = [asyncio.create_task(one_client(client, n)) for n in range(CLIENTS)]

    async def until(condition: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)

    # Every request has reached its upstream, the fast ones have finished and the leaving
    # ones have left; the slow ones have seconds to go.
    await until(lambda: fast.served == FAST and slow.served == CLIENTS - FAST)
    await until(lambda: sum(t.done() for t in tasks) == FAST + LEAVING)
    assert slow.in_flight > 0
    server.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    return list(results), sent


def test_200_streaming_clients_some_leaving_then_sigterm_lose_nothing(tmp_path: Path) -> None:
    user = tmp_path / "user"
    with BatchServer(chunk_delay=0.02, chunk_size=4) as fast, \
            BatchServer(chunk_delay=1.0, chunk_size=4) as slow:
        write_servers(user / "openai-servers.json", fast=fast, slow=slow)
        server = start_server(user, "--grace", str(GRACE), "--max-concurrent", "1000",
                              plugins="llmcli-openai")
        results, sent = asyncio.run(load(server, fast, slow))
        out, err = server.proc.communicate(timeout=30)
        exited = time.monotonic() - sent
        # Every upstream stream is let go of: the leaving clients' and the cut ones'.
        wait_for(lambda: fast.in_flight == 0 and slow.in_flight == 0, timeout=10)
    assert server.proc.returncode == 0, err
    assert exited < GRACE + 2, exited
    assert out.splitlines()[-1] == "llmcli serve: stopped"
    assert "Traceback" not in err and "Exception in ASGI" not in err, err[-3000:]
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert Counter(results) == {("fast", "complete"): FAST, ("leaving", "left"): LEAVING,
                                ("slow", "cut"): CLIENTS - FAST - LEAVING}
    rows = server.rows()
    assert len(rows) == CLIENTS  # every request logged
    by_kind = Counter((r["prompt"].split("(")[1].rstrip(")"), r["status"], r["error"])
                      for r in rows)
    assert by_kind == {("fast", "complete", None): FAST,
                       ("leaving", "partial", "interrupted"): LEAVING,
                       ("slow", "partial", "interrupted"): CLIENTS - FAST - LEAVING}

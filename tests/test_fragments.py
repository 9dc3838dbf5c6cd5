"""-f / --sf: files' and URLs' contents added to the prompt and the system prompt. URLs are
served by a local HTTP server on 127.0.0.1; nothing here reaches the internet."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmcli.cli import cli

PAGES = {
    "/doc.txt": (200, "text/plain; charset=utf-8", "Served text: café\n".encode()),
    "/latin1.txt": (200, "text/plain; charset=latin-1", "naïve".encode("latin-1")),
    "/missing": (404, "text/plain", b"gone"),
}


#: Bodies past the size limit: declared up front, or streamed without a length.
HUGE = 10 * 1024 * 1024 + 1


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        try:
            if self.path.startswith("/huge"):
                return self.huge(declared=self.path == "/huge")
            if self.path == "/drip":
                return self.drip()
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
            return None
        status, content_type, body = PAGES.get(self.path, (404, "text/plain", b""))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def huge(self, declared: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if declared:
            self.send_header("Content-Length", str(HUGE))
        else:
            self.send_header("Connection", "close")  # the body ends when the connection does
        self.end_headers()
        block = b"a" * 65536
        for _ in range(HUGE // len(block) + 2):
            self.wfile.write(block)

    def drip(self) -> None:
        """Each byte in time for a read timeout, never all of them in time for the limit."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "100")
        self.end_headers()
        for _ in range(100):
            self.wfile.write(b"a")
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def run(test_models):
    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, list(args), input=input)

    return invoke


def one_line_error(result, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and text in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_files_and_urls_go_before_the_prompt(run, test_models, tmp_path: Path,
                                             server: str) -> None:
    code = tmp_path / "code.py"
    code.write_text("def add(a, b):\n    return a + b\n")
    result = run("-m", "test-eats", "Explain", "-f", str(code), "-f", f"{server}/doc.txt",
                 "-o", "reply", "ok")
    assert result.exit_code == 0, result.output
    (request,) = test_models.requests
    assert request.prompt == ("def add(a, b):\n    return a + b\n\nServed text: café\n\n"
                              "Explain")


def test_system_fragments(run, test_models, tmp_path: Path, server: str) -> None:
    rules = tmp_path / "rules.md"
    rules.write_text("Rule one.\n")
    run("-m", "test-eats", "q", "--sf", str(rules), "-s", "Be terse",
        "--sf", f"{server}/latin1.txt")
    request = test_models.requests[-1]
    assert request.system == "Rule one.\n\nnaïve\n\nBe terse"
    assert request.prompt == "q"


def test_a_fragment_alone_is_a_prompt(run, test_models, tmp_path: Path) -> None:
    (tmp_path / "q.txt").write_text("What is 2+2?\n")
    assert run("-m", "test-eats", "-f", str(tmp_path / "q.txt")).exit_code == 0
    assert test_models.requests[-1].prompt == "What is 2+2?"


@pytest.mark.parametrize(("where", "message"), [
    ("missing-file", "Fragment '{tmp}/missing-file': no such file"),
    ("", "is a directory, not a file"),
])
def test_file_errors_are_one_line(run, test_models, tmp_path: Path, where: str,
                                  message: str) -> None:
    target = str(tmp_path / where) if where else str(tmp_path)
    one_line_error(run("-m", "test-eats", "x", "-f", target), message.format(tmp=tmp_path))
    one_line_error(run("-m", "test-eats", "x", "--sf", target), message.format(tmp=tmp_path))
    assert not test_models.requests


def test_binary_files_and_url_errors_are_one_line(run, test_models, tmp_path: Path,
                                                 server: str) -> None:
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\x00")
    one_line_error(run("-m", "test-eats", "x", "-f", str(tmp_path / "blob.bin")),
                   "is not UTF-8 text")
    one_line_error(run("-m", "test-eats", "x", "-f", f"{server}/missing"),
                   f"Fragment {server}/missing: HTTP 404")
    # A port nobody listens on: refused at once.
    one_line_error(run("-m", "test-eats", "x", "-f", "http://127.0.0.1:9/none"),
                   "Fragment http://127.0.0.1:9/none: cannot fetch it")
    assert not test_models.requests


def test_a_template_keeps_its_fragments_and_reads_them_when_used(run, test_models,
                                                                tmp_path: Path,
                                                                user_dir: Path,
                                                                monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("v1")
    run("-m", "test-eats", "Summarize", "-f", "notes.txt", "--save", "notes")
    saved = json.loads((user_dir / "templates" / "notes.json").read_text())
    assert saved["fragments"] == [str(tmp_path / "notes.txt")]  # absolute: usable anywhere
    Path("notes.txt").write_text("v2")
    monkeypatch.chdir(user_dir)
    assert run("-t", "notes").exit_code == 0
    assert test_models.requests[-1].prompt == "v2\n\nSummarize"


@pytest.mark.parametrize("path", ["/huge", "/huge-streamed"])
def test_a_url_past_the_size_limit_is_a_one_line_error(run, test_models, server: str,
                                                       path: str) -> None:
    one_line_error(run("-m", "test-eats", "x", "-f", f"{server}{path}"),
                   f"Fragment {server}{path}: larger than 10 MiB; save it to a file and pass "
                   "the file")
    assert not test_models.requests


def test_a_url_must_download_within_the_time_limit(run, test_models, server: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcli import fragments

    monkeypatch.setattr(fragments, "URL_TIMEOUT", 1.0)  # each byte comes in 0.05 s
    started = time.monotonic()
    one_line_error(run("-m", "test-eats", "x", "-f", f"{server}/drip"),
                   f"Fragment {server}/drip: the download took longer than 1 s")
    assert time.monotonic() - started < 3
    assert not test_models.requests


def test_a_url_at_the_size_limit_is_read(run, test_models, server: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcli import fragments

    size = len("Served text: café\n".encode())
    monkeypatch.setattr(fragments, "MAX_URL_BYTES", size)
    assert run("-m", "test-eats", "x", "-f", f"{server}/doc.txt").exit_code == 0
    monkeypatch.setattr(fragments, "MAX_URL_BYTES", size - 1)
    one_line_error(run("-m", "test-eats", "x", "-f", f"{server}/doc.txt"),
                   f"larger than {size - 1} bytes")

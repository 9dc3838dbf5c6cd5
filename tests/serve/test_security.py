"""llmcli serve in front of people: what a client may make the server do, and what not.

Each test is one hole, probed with several payloads, through real uvicorn, the official SDKs,
httpx, or a raw socket where a well-behaved client cannot send what is tested (half a request).
Nothing leaves 127.0.0.1: the upstreams here are fakes on loopback ports the tests open.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.base import RecordedRequest, Reply
from tests.fakes.openai import FakeOpenAI
from tests.script import SCRIPT, env_for
from tests.serve.conftest import API_KEY, Server, start_server, wait_for

AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = {"Content-Type": "application/json"}
USER = [{"role": "user", "content": "Name a state"}]
SECRET = "SECRET-FILE-CONTENT-7f3a"
PLUGINS = "llmcli-testmodels,llmcli-openai,llmcli-anthropic"
READ_TIMEOUT = 2  # the guarded server's --read-timeout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def chat(server: Server, body: Any, headers: dict[str, str] | None = None,
         path: str = "/chat/completions", **kwargs: Any) -> httpx.Response:
    """POST to the server: ``body`` as JSON (or raw bytes / a generator as it is)."""
    sent = {**JSON, **AUTH, **(headers or {})}
    if isinstance(body, bytes | str) or hasattr(body, "__next__"):
        kwargs["content"] = body
    else:
        kwargs["json"] = body
    return httpx.post(server.v1 + path, headers=sent, timeout=60, **kwargs)


def assert_openai_error(reply: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    for word in words:
        assert word in error["message"], error
    assert "Traceback" not in reply.text
    return dict(error)


def assert_anthropic_error(reply: httpx.Response, status: int, kind: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.json()["type"] == "error"
    assert reply.json()["error"]["type"] == kind


class Gated(FakeOpenAI):
    """An OpenAI-compatible upstream that holds each request until ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__("llama")
        self.gate = threading.Event()

    def handle(self, request: RecordedRequest) -> Reply:
        self.gate.wait(60)
        return super().handle(request)


class Counting:
    """A plain HTTP server on 127.0.0.1 that counts every request and serves a schema."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                hits.append(self.path)
                data = json.dumps({"enum": ["FROM-HTTP"], "x": {"enum": ["FROM-HTTP"]},
                                   "$defs": {"m": {"$dynamicAnchor": "meta"}}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def counting() -> Iterator[Counting]:
    running = Counting()
    yield running
    running.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Gated]:
    gated = Gated()
    gated.gate.set()
    gated.start()
    yield gated
    gated.gate.set()
    gated.stop()


#: Base URLs that are this server itself ({port}: its port), as an openai-servers entry
#: or a provider's *_BASE_URL may name them.
SELF_URLS = {
    "self-localhost": "http://localhost:{port}/v1",
    "self-localhost-dot": "http://LOCALHOST.:{port}/v1",
    "self-loopback": "http://127.0.0.1:{port}/v1",
    "self-loopback-2": "http://127.0.0.2:{port}/v1",
    "self-decimal": "http://2130706433:{port}/v1",
    "self-unspecified": "http://0.0.0.0:{port}/v1",
    "self-v6": "http://[::1]:{port}/v1",
    "self-v4-mapped": "http://[::ffff:127.0.0.1]:{port}/v1",
    "self-hostname": "http://" + socket.gethostname() + ":{port}",
}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, upstream: Gated) -> Iterator[Server]:
    """A server with small limits, a model behind a gated upstream ("slow"), models whose
    base URL is the server itself, and the Anthropic plugin's base URL pointing here."""
    user_dir = tmp_path_factory.mktemp("guarded") / "user"
    user_dir.mkdir()
    port = free_port()
    servers = [{"id": "slow", "model_name": "m", "base_url": upstream.url + "/v1",
                "prefill_style": "trailing_assistant"}]
    servers += [{"id": name, "model_name": name, "base_url": url.format(port=port),
                 "prefill_style": "trailing_assistant"} for name, url in SELF_URLS.items()]
    (user_dir / "openai-servers.json").write_text(json.dumps({"servers": servers}))
    running = start_server(
        user_dir, "--port", str(port), "--api-key", API_KEY, "-m", "test-eats",
        "--max-body", "64K", "--read-timeout", str(READ_TIMEOUT), "--max-concurrent", "2",
        "--allowed-host", "proxy.example", "--allowed-host", "other.example:8443",
        plugins=PLUGINS, ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}",
        ANTHROPIC_API_KEY="sk-ant-dummy-key-for-the-loop-test")
    yield running
    running.stop()


def exchanges(server: Server) -> int:
    """Exchanges the server has logged so far."""
    return len(server.rows())


# -- 1. a schema never reads a file or makes a request ---------------------------------------


def secret_file(directory: Path) -> Path:
    path = directory / "secret.json"
    path.write_text(json.dumps({"x": {"enum": [SECRET]}, "enum": [SECRET]}))
    return path


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


# A prompt ending in '"' and the prefill '"': the test model's reply is a JSON string, so
# a schema pulled in from a file would be applied, and its enum quoted in the error.
QUOTED = [{"role": "user", "content": 'Say"'}, {"role": "assistant", "content": '"'}]


@pytest.mark.parametrize("ref", [
    "file://{path}#/x",
    "file://{path}",
    "file:{path}",
    "file://localhost{path}",
    "FILE://{path}#/x",
    "{path}",
    "secret.json",
    "../secret.json#/x",
])
def test_a_file_ref_is_refused_and_never_read(server: Server, tmp_path: Path,
                                              ref: str) -> None:
    path = secret_file(tmp_path)
    before = exchanges(server)
    reply = chat(server, {"model": "test-eats", "messages": QUOTED,
                          "response_format": json_schema({"$ref": ref.format(path=path)})})
    error = assert_openai_error(reply, 400, "points outside the schema")
    assert error["param"] == "response_format"
    assert SECRET not in reply.text
    assert exchanges(server) == before  # refused before any model call: nothing logged
    assert SECRET not in json.dumps(server.rows())


def test_a_nested_file_ref_is_refused(server: Server, tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    schema = {"type": "object", "properties": {
        "a": {"anyOf": [{"type": "string"}, {"$ref": f"file://{path}#/x"}]}}}
    reply = chat(server, {"model": "test-eats", "messages": QUOTED,
                          "response_format": json_schema(schema)})
    assert_openai_error(reply, 400, "points outside the schema")
    assert SECRET not in reply.text


@pytest.mark.parametrize("schema", [
    {"$ref": "http://127.0.0.1:{port}/s.json"},
    {"$ref": "http://localhost:{port}/s.json#/x"},
    {"items": {"$dynamicRef": "http://127.0.0.1:{port}/d.json#meta"}},
    {"$id": "http://127.0.0.1:{port}/base/", "properties": {"a": {"$ref": "s.json"}}},
    {"$ref": "urn:example:{port}"},
])
def test_an_http_ref_is_refused_and_no_request_is_made(server: Server, counting: Counting,
                                                       schema: dict[str, Any]) -> None:
    schema = json.loads(json.dumps(schema).replace("{port}", str(counting.port)))
    counting.hits.clear()
    reply = chat(server, {"model": "test-eats", "messages": QUOTED,
                          "response_format": json_schema(schema)})
    assert_openai_error(reply, 400, "points outside the schema")
    assert "FROM-HTTP" not in reply.text
    assert counting.hits == []


def test_refs_inside_the_schema_still_work(server: Server) -> None:
    for schema in ({"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s"},
                   {"$defs": {"s": {"$anchor": "str", "type": "string"}}, "$ref": "#str"},
                   {"$id": "https://example.invalid/root.json",
                    "$defs": {"s": {"$id": "s.json", "type": "string"}}, "$ref": "s.json"}):
        reply = chat(server, {"model": "test-eats", "messages": QUOTED,
                              "response_format": json_schema(schema)})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == 'reply to: Say"'


def test_a_self_referencing_schema_is_a_400_before_any_call(server: Server) -> None:
    before = exchanges(server)
    reply = chat(server, {"model": "test-eats", "messages": QUOTED,
                          "response_format": json_schema({"$ref": "#"})})
    assert_openai_error(reply, 400, "refers to itself")
    assert exchanges(server) == before


# -- the CLI, templates ------------------------------------------------------------------------


def run_cli(user_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL,
                          env=env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels"))


def logged(user_dir: Path) -> list[Any]:
    """The rows of a user directory's log (none if there is no log)."""
    import sqlite3

    if not (user_dir / "logs.db").exists():
        return []
    with sqlite3.connect(user_dir / "logs.db") as db:
        return list(db.execute("select * from responses"))


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


def test_cli_schema_with_a_file_ref_reads_nothing(tmp_path: Path, counting: Counting) -> None:
    # A FIFO with no writer: opening it to read would block until the timeout.
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    path = secret_file(tmp_path)
    counting.hits.clear()
    for ref in (f"file://{fifo}", str(fifo), f"file://{path}#/x",
                f"http://127.0.0.1:{counting.port}/s.json"):
        schema = json.dumps({"type": "object", "properties": {"a": {"$ref": ref}}})
        result = run_cli(tmp_path / "user", "-m", "test-eats", "--schema", schema, "Say",
                         timeout=30)
        assert_one_line_error(result, "points outside the schema")
        assert SECRET not in result.stderr
    # The same schema from a file (--schema FILE).
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps({"$ref": f"file://{fifo}"}))
    assert_one_line_error(run_cli(tmp_path / "user", "-m", "test-eats", "--schema",
                                  str(schema_file), "Say", timeout=30),
                          "points outside the schema")
    assert counting.hits == []
    assert logged(tmp_path / "user") == []


def test_a_template_with_a_file_ref_is_refused(tmp_path: Path) -> None:
    user_dir = tmp_path / "user"
    (user_dir / "templates").mkdir(parents=True)
    path = secret_file(tmp_path)
    (user_dir / "templates" / "leak.json").write_text(json.dumps(
        {"prompt": "Say", "model": "test-eats", "schema": {"$ref": f"file://{path}#/x"}}))
    result = run_cli(user_dir, "-t", "leak")
    assert_one_line_error(result, "'leak'", "points outside the schema")
    assert SECRET not in result.stderr


# -- exception text never goes into a body ----------------------------------------------------


def test_unexpected_exceptions_are_a_generic_500() -> None:
    from llmcli.errors import ProviderError
    from llmcli.serve.errors import from_exception

    for exc in (OSError(f"[Errno 2] No such file: /etc/{SECRET}"), KeyError(SECRET),
                ValueError(f"bad value {SECRET}\nsecond line"), RuntimeError()):
        error = from_exception(exc)
        assert error.status == 500 and SECRET not in error.message
        assert "LLMCLI_DEBUG" in error.message
    # llmcli's own messages are kept: they were written for the user.
    assert from_exception(ProviderError("upstream said no", status=400)).message == (
        "upstream said no")


# -- 2. no loops; no cross-site or DNS-rebinding access ---------------------------------------


@pytest.mark.parametrize("name", sorted(SELF_URLS))
def test_a_model_whose_url_is_this_server_is_refused(guarded: Server, upstream: Gated,
                                                     name: str) -> None:
    before = exchanges(guarded)
    reply = chat(guarded, {"model": name, "messages": USER})
    error = assert_openai_error(reply, 400, "this server's own address")
    assert error["code"] == "model_loops"
    assert exchanges(guarded) == before


def test_a_provider_base_url_pointing_here_is_refused(guarded: Server) -> None:
    # ANTHROPIC_BASE_URL is the server itself: the Anthropic SDK would call /v1/messages here.
    claude = anthropic.Anthropic(base_url=guarded.url, api_key=API_KEY, max_retries=0)
    before = exchanges(guarded)
    with pytest.raises(anthropic.BadRequestError, match="own address"):
        claude.messages.create(model="claude-haiku-4-5", max_tokens=10,
                               messages=[{"role": "user", "content": "hi"}])
    assert exchanges(guarded) == before


def test_another_port_on_loopback_is_not_a_loop(guarded: Server, upstream: Gated) -> None:
    reply = chat(guarded, {"model": "slow", "messages": USER})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("name", ["vllm/vllm/openai/gpt-4o-mini", "vllm/vllm/vllm/x",
                                  "ollama/vllm/gpt-4o-mini", "llama-server/ollama/qwen",
                                  "vllm/llama-server/x", "ollama/Llama-Server/x",
                                  "vllm/openrouter/x", "llama-server/deepseek/x"])
def test_nested_presets_are_refused(guarded: Server, name: str) -> None:
    before = exchanges(guarded)
    oai = openai.OpenAI(base_url=guarded.v1, api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="nests the preset") as caught:
        oai.chat.completions.create(model=name, messages=USER)  # type: ignore[arg-type]
    assert caught.value.code == "model_refused"
    assert exchanges(guarded) == before


def test_nested_presets_resolve_or_not(load_plugins: Any) -> None:
    from llmcli import api
    from llmcli.errors import RefusedModelError

    load_plugins("llmcli-openai")
    for name in ("vllm/vllm/x", "ollama/vllm/x", "llama-server/OLLAMA/x"):
        with pytest.raises(RefusedModelError, match="nests the preset"):
            api.get_model(name)
    # A hosted API's own names, and names that only look like a provider's, are fine.
    for name in ("openrouter/deepseek/deepseek-chat", "openrouter/openai/gpt-4o",
                 "vllm/openai/gpt-oss-20b", "vllm/meta-llama/Llama-3.1-8B-Instruct"):
        assert api.get_model(name).model_id == name


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io",
                                  "localhost.evil.example", "0.0.0.0", "[::2]:80",
                                  "other.example:9999", "proxy.example.evil"])
def test_a_foreign_host_is_forbidden(guarded: Server, host: str) -> None:
    before = exchanges(guarded)
    reply = chat(guarded, {"messages": USER}, headers={"Host": host})
    error = assert_openai_error(reply, 403, "is not allowed")
    assert error["type"] == "permission_error"
    reply = chat(guarded, {"max_tokens": 5, "messages": USER}, path="/messages",
                 headers={"Host": host})
    assert_anthropic_error(reply, 403, "permission_error")
    for path in ("/v1/models", "/health"):
        assert httpx.get(guarded.url + path, headers={**AUTH, "Host": host}).status_code == 403
    assert exchanges(guarded) == before


@pytest.mark.parametrize("host", ["localhost", "localhost:1234", "LOCALHOST", "127.0.0.1",
                                  "127.0.0.5:80", "[::1]:9", "app.localhost",
                                  "proxy.example", "proxy.example:443", "other.example:8443"])
def test_loopback_and_allowed_hosts_are_served(guarded: Server, host: str) -> None:
    reply = chat(guarded, {"messages": USER}, headers={"Host": host})
    assert reply.status_code == 200, reply.text


def test_a_server_on_another_address_allows_that_address() -> None:
    from llmcli.serve.guard import HostCheck

    specific = HostCheck((), ("192.0.2.7", 8000))
    assert specific.allows("192.0.2.7", 8000) and specific.allows("localhost", None)
    assert not specific.allows("192.0.2.8", 8000)
    assert not specific.allows("evil.example", 8000)
    everywhere = HostCheck((), ("0.0.0.0", 8000))
    assert everywhere.allows(socket.gethostname().lower(), 8000)
    assert everywhere.allows("127.0.0.9", None)
    assert not everywhere.allows("192.0.2.8", 8000)  # no address of this machine
    assert not everywhere.allows("evil.example", 8000)
    loopback = HostCheck((), ("127.0.0.1", 8000))
    assert not loopback.allows("192.0.2.7", 8000)


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "https://evil.example:443",
                                    "http://localhost.evil.example:8000",
                                    "http://127.0.0.1.nip.io", "file://", "http://10.0.0.1"])
def test_a_foreign_origin_is_forbidden(guarded: Server, origin: str) -> None:
    before = exchanges(guarded)
    oai = openai.OpenAI(base_url=guarded.v1, api_key=API_KEY, max_retries=0,
                        default_headers={"Origin": origin})
    with pytest.raises(openai.PermissionDeniedError, match="not allowed"):
        oai.chat.completions.create(model="test-eats", messages=USER)  # type: ignore[arg-type]
    claude = anthropic.Anthropic(base_url=guarded.url, api_key=API_KEY, max_retries=0,
                                 default_headers={"Origin": origin})
    with pytest.raises(anthropic.PermissionDeniedError):
        claude.messages.create(model="test-eats", max_tokens=5,
                               messages=[{"role": "user", "content": "hi"}])
    assert exchanges(guarded) == before


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1",
                                    "http://[::1]:8080", "https://proxy.example"])
def test_loopback_and_allowed_origins_are_served(guarded: Server, origin: str) -> None:
    reply = chat(guarded, {"messages": USER}, headers={"Origin": origin})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x",
                                          "application/jsonx", "text/json"])
def test_a_post_must_be_json(guarded: Server, content_type: str | None) -> None:
    body = json.dumps({"messages": USER}).encode()
    headers = {**AUTH} if content_type is None else {**AUTH, "Content-Type": content_type}
    before = exchanges(guarded)
    reply = httpx.post(guarded.v1 + "/chat/completions", content=body, headers=headers)
    error = assert_openai_error(reply, 415, "Content-Type: application/json")
    assert error["code"] == "unsupported_media_type"
    reply = httpx.post(guarded.v1 + "/messages", content=body, headers=headers)
    assert_anthropic_error(reply, 415, "invalid_request_error")
    assert exchanges(guarded) == before


def test_json_with_a_charset_is_json(guarded: Server) -> None:
    reply = chat(guarded, json.dumps({"messages": USER}).encode(),
                 headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert reply.status_code == 200, reply.text


# -- 3. bounds -------------------------------------------------------------------------------

LIMIT = 64 * 1024  # the guarded server's --max-body


def body_of(size: int) -> bytes:
    """A valid request body of exactly ``size`` bytes."""
    head = json.dumps({"messages": [{"role": "user", "content": ""}]}).encode()
    pad = size - len(head)
    return json.dumps({"messages": [{"role": "user", "content": "x" * pad}]}).encode()


@pytest.mark.parametrize("size", [LIMIT + 1, 4 * LIMIT, 1024 * 1024, 8 * 1024 * 1024])
def test_a_body_over_the_limit_is_a_413(guarded: Server, size: int) -> None:
    before = exchanges(guarded)
    body = body_of(size)
    assert len(body) == size
    error = assert_openai_error(chat(guarded, body), 413, "larger than 64 KiB")
    assert error["code"] == "request_too_large"
    assert_anthropic_error(chat(guarded, body, path="/messages"), 413, "request_too_large")
    assert exchanges(guarded) == before


def test_a_body_at_the_limit_is_served(guarded: Server) -> None:
    reply = chat(guarded, body_of(LIMIT))
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(("chunk", "count"), [(16 * 1024, 5), (1000, 70), (LIMIT + 1, 1),
                                              (256 * 1024, 16)])
def test_a_chunked_body_over_the_limit_is_a_413(guarded: Server, chunk: int,
                                                count: int) -> None:
    # No Content-Length: httpx sends a generator with Transfer-Encoding: chunked.
    def parts() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(count):
            yield b"x" * chunk
        yield b'"}]}'

    before = exchanges(guarded)
    assert_openai_error(chat(guarded, parts()), 413, "larger than")
    assert exchanges(guarded) == before


def test_a_small_chunked_body_is_served(guarded: Server) -> None:
    def parts() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", '
        yield b'"content": "Name a state"}]}'

    reply = chat(guarded, parts())
    assert reply.status_code == 200, reply.text


def raw(port: int, data: bytes, wait: float = READ_TIMEOUT + 15) -> tuple[bytes, float]:
    """Send ``data`` and stop; what the server answers until it closes, and how long it
    took (a deadline: the server must close by then)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        if data:
            conn.sendall(data)
        received = b""
        while True:
            try:
                piece = conn.recv(65536)
            except TimeoutError:
                raise AssertionError(f"still open after {wait} s: {received!r}") from None
            except ConnectionResetError:
                break
            if not piece:
                break
            received += piece
    return received, time.monotonic() - started


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\n")


@pytest.mark.parametrize("data", [
    HEAD + b"Content-Length: 1000\r\n\r\n" + b'{"messages": [',
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"10\r\n" + b'{"messages": [{"',
    HEAD + b"Content-Length: 30\r\n\r\n",
])
def test_a_half_sent_body_times_out(guarded: Server, data: bytes) -> None:
    before = exchanges(guarded)
    received, took = raw(port_of(guarded), data)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"--read-timeout" in received
    assert took >= READ_TIMEOUT - 0.5
    assert exchanges(guarded) == before


@pytest.mark.parametrize("data", [b"", b"POST /v1/chat/completions HTTP/1.1\r\n",
                                  HEAD, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: "])
def test_half_sent_headers_are_closed(guarded: Server, data: bytes) -> None:
    received, took = raw(port_of(guarded), data)
    assert received == b""  # closed without an answer: no request ever arrived
    assert took >= READ_TIMEOUT - 0.5


def test_half_a_second_request_on_a_kept_alive_connection_is_closed(guarded: Server) -> None:
    # uvicorn's keep-alive timer stops at the next request's first byte; the rest of its
    # headers must still arrive in time.
    with socket.create_connection(("127.0.0.1", port_of(guarded)), timeout=30) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += conn.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 ")
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 1")
        started = time.monotonic()
        try:
            rest = conn.recv(4096)
        except TimeoutError:
            raise AssertionError("still open after 30 s") from None
        except ConnectionResetError:
            rest = b""
    assert rest == b""
    assert READ_TIMEOUT - 0.5 <= time.monotonic() - started < 20


def test_beyond_max_concurrent_is_a_429(guarded: Server, upstream: Gated) -> None:
    upstream.gate.clear()
    seen = len(upstream.chat_requests)
    replies: list[httpx.Response] = []

    def call(stream: bool) -> None:
        replies.append(chat(guarded, {"model": "slow", "messages": USER, "stream": stream}))

    threads = [threading.Thread(target=call, args=(s,)) for s in (False, True)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(upstream.chat_requests) >= seen + 2, timeout=30)
        # Two requests in flight (--max-concurrent 2): the third is turned away, on each
        # wire and whatever the model.
        reply = chat(guarded, {"model": "test-eats", "messages": USER})
        error = assert_openai_error(reply, 429, "--max-concurrent")
        assert reply.headers["retry-after"] == "1"
        assert error["type"] == "rate_limit_error"
        reply = chat(guarded, {"max_tokens": 5, "messages": USER}, path="/messages")
        assert_anthropic_error(reply, 429, "rate_limit_error")
        assert reply.headers["retry-after"] == "1"
        oai = openai.OpenAI(base_url=guarded.v1, api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            oai.chat.completions.create(model="test-eats", messages=USER)  # type: ignore[arg-type]
        # Listing models runs none: not counted.
        assert httpx.get(guarded.v1 + "/models", headers=AUTH).status_code == 200
    finally:
        upstream.gate.set()
        for thread in threads:
            thread.join(60)
    assert [r.status_code for r in replies] == [200, 200]
    assert chat(guarded, {"model": "test-eats", "messages": USER}).status_code == 200


@pytest.mark.parametrize(("body", "words"), [
    ({"messages": USER * 4097}, "at most 4096"),
    ({"messages": USER, "stop": [f"s{i}" for i in range(17)]}, "at most 16 stop"),
    ({"messages": USER, "stop": "x" * 257}, "1 to 256 characters"),
    ({"messages": USER, "stop": ["ok", ""]}, "1 to 256 characters"),
    ({"messages": USER, "max_tokens": 262_145}, "less than or equal to 262144"),
    ({"messages": USER, "max_completion_tokens": 10**12}, "less than or equal to 262144"),
    ({"messages": [{"role": "user", "content": ""}]}, "final user message is empty"),
    ({"messages": [{"role": "user", "content": " \n\t "}]}, "final user message is empty"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "  "}]},
                   {"role": "assistant", "content": "Sure"}]}, "final user message is empty"),
])
def test_request_bounds_are_400s(server: Server, body: dict[str, Any], words: str) -> None:
    before = exchanges(server)
    assert_openai_error(chat(server, body), 400, words)
    assert exchanges(server) == before


@pytest.mark.parametrize(("body", "words"), [
    ({"max_tokens": 10**6, "messages": USER}, "less than or equal to 262144"),
    ({"max_tokens": 5, "messages": USER, "stop_sequences": ["a"] * 17}, "at most 16 stop"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "\n"}]}, "is empty"),
])
def test_anthropic_request_bounds_are_400s(server: Server, body: dict[str, Any],
                                           words: str) -> None:
    reply = chat(server, body, path="/messages")
    assert_anthropic_error(reply, 400, "invalid_request_error")
    assert words in reply.json()["error"]["message"]


# -- 4. smaller items ------------------------------------------------------------------------


def test_no_api_description_is_public(server: Server) -> None:
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        for headers in ({}, AUTH):
            reply = httpx.get(server.url + path, headers=headers)
            assert reply.status_code == 404, path
            assert "paths" not in reply.text and "swagger" not in reply.text.lower()


def start_fails(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``llmcli serve ARGS`` that must exit on its own (killed if it starts listening)."""
    # A user directory of its own: one that a started serve may create and write in (root can
    # create any path), never shared with another run.
    user_dir = Path(tempfile.mkdtemp(prefix="llmcli-start-fails-")) / "user"
    environment = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels", **env)
    proc = subprocess.Popen([str(SCRIPT), "serve", "--port", "0", *args], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"serve kept running: {out!r} {err!r}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(("args", "env"), [
    (("--api-key", ""), {}),
    (("--api-key", "  "), {}),
    ((), {"LLMCLI_SERVE_API_KEY": ""}),
])
def test_an_empty_api_key_is_refused(args: tuple[str, ...], env: dict[str, str]) -> None:
    result = start_fails(*args, **env)
    assert_one_line_error(result, "is empty")
    assert "listening" not in result.stdout


def test_a_non_loopback_address_without_a_key_warns() -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the bind fails, after the
    # warning, and nothing listens anywhere.
    result = start_fails("--host", "192.0.2.1")
    assert "warning: listening on 192.0.2.1 without --api-key" in result.stderr
    assert "Cannot listen on 192.0.2.1" in result.stderr
    result = start_fails("--host", "192.0.2.1", "--api-key", "k" * 20)
    assert "warning" not in result.stderr
    assert "Cannot listen on 192.0.2.1" in result.stderr


@pytest.mark.parametrize(("args", "words"), [
    (("--max-body", "lots"), "--max-body 'lots'"),
    (("--max-body", "0"), "--max-body '0'"),
    (("--allow-model", "no-such-model"), "Unknown model: 'no-such-model'"),
    (("--allow-models-file", "/nonexistent/models.txt"), "cannot read it"),
])
def test_bad_options_fail_at_start(args: tuple[str, ...], words: str) -> None:
    assert_one_line_error(start_fails(*args), words)


@pytest.fixture(scope="module")
def allowlisted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("allowlisted")
    models = root / "models.txt"
    models.write_text("# the models this server serves\n\nt-emulated  # by alias\n")
    running = start_server(root / "user", "--api-key", API_KEY, "-m", "test-eats",
                           "--allow-model", "test-echoes", "--allow-models-file", str(models),
                           "--allowed-host", "*")
    yield running
    running.stop()


ALLOWED = {"test-eats", "test-echoes", "test-emulated"}


def test_only_allowed_models_are_listed(allowlisted: Server) -> None:
    oai = openai.OpenAI(base_url=allowlisted.v1, api_key=API_KEY, max_retries=0)
    assert {m.id for m in oai.models.list()} == ALLOWED
    claude = anthropic.Anthropic(base_url=allowlisted.url, api_key=API_KEY, max_retries=0)
    assert {m.id for m in claude.models.list()} == ALLOWED


@pytest.mark.parametrize("name", ["test-unsupported", "t-unsupported", "test-keyed",
                                  "no-such-model", "test-eat", "openai/gpt-4o"])
def test_other_models_are_not_available(allowlisted: Server, name: str) -> None:
    before = exchanges(allowlisted)
    reply = chat(allowlisted, {"model": name, "messages": USER})
    error = assert_openai_error(reply, 404, f"Model {name!r} is not available")
    for other in ("test-unsupported", "test-keyed", "test-eats", "did you mean"):
        if other != name:
            assert other not in error["message"]
    reply = chat(allowlisted, {"model": name, "max_tokens": 5, "messages": USER},
                 path="/messages")
    assert_anthropic_error(reply, 404, "not_found_error")
    assert exchanges(allowlisted) == before


@pytest.mark.parametrize("name", [None, "test-eats", "t-echoes", "test-emulated"])
def test_allowed_models_are_served(allowlisted: Server, name: str | None) -> None:
    body: dict[str, Any] = {"messages": USER}
    if name is not None:
        body["model"] = name
    reply = chat(allowlisted, body)
    assert reply.status_code == 200, reply.text


def test_any_host_with_a_star(allowlisted: Server) -> None:
    reply = chat(allowlisted, {"messages": USER},
                 headers={"Host": "llm.internal.example", "Origin": "https://app.example"})
    assert reply.status_code == 200, reply.text


# -- 5. the key --------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": f"Bearer {API_KEY[:-1]}"},
    {"Authorization": f"Bearer {API_KEY}x"},
    {"Authorization": f"Bearer {API_KEY.upper()}"},
    {"Authorization": "Bearer"},
    {"Authorization": f"Basic {API_KEY}"},
    {"Authorization": API_KEY},
    {"x-api-key": API_KEY},  # the Anthropic wire's header, not the OpenAI wire's
])
def test_a_wrong_key_calls_no_model_and_logs_nothing(guarded: Server, upstream: Gated,
                                                     headers: dict[str, str]) -> None:
    seen = len(upstream.requests)
    before = exchanges(guarded)
    reply = httpx.post(guarded.v1 + "/chat/completions", headers={**JSON, **headers},
                       json={"model": "slow", "messages": USER}, timeout=30)
    assert_openai_error(reply, 401, "Invalid or missing API key")
    if "x-api-key" not in headers:
        reply = httpx.post(guarded.v1 + "/messages", headers={**JSON, **headers}, timeout=30,
                           json={"model": "slow", "max_tokens": 5, "messages": USER})
        assert_anthropic_error(reply, 401, "authentication_error")
    assert len(upstream.requests) == seen
    assert exchanges(guarded) == before
    assert API_KEY not in reply.text

"""Images through ``llmcli serve``, driven by the official SDKs: an OpenAI ``image_url`` part
(data URL) and an Anthropic base64 ``image`` block both reach a backend that sees as its own
image block (checked by the fake against the anthropic SDK's types); a backend that cannot
see, an image given by URL, bad base64 or bytes of another type are a 400 in each wire's
shape, and the server never fetches the URL."""

from __future__ import annotations

import base64
import http.server
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.serve.conftest import Server, start_server
from tests.test_attachments import JPEG, png

ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"
IMAGE = png(2, 2)
B64 = base64.b64encode(IMAGE).decode()
DATA_URL = "data:image/png;base64," + B64
SEEING = "claude-sonnet-4-5"
BLIND = "test-eats"  # the test models take no attachments


class _Counting(http.server.BaseHTTPRequestHandler):
    hits = 0

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(IMAGE)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        claude.reply = 'total": 12.5}'
        yield claude


@pytest.fixture(scope="module")
def server(fake: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("serve") / "user",
                           plugins="llmcli-anthropic,llmcli-testmodels",
                           ANTHROPIC_BASE_URL=fake.url, ANTHROPIC_API_KEY=ANTHROPIC_KEY)
    yield running
    running.stop()


@pytest.fixture
def oai(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(server: Server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0) as client:
        yield client


def _image_sent(fake: FakeAnthropic) -> dict[str, Any]:
    block: dict[str, Any] = fake.last_body["messages"][0]["content"][0]
    return block


EXPECTED_BLOCK = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                              "data": B64}}


@pytest.mark.parametrize("stream", [False, True])
def test_openai_image_url_part_reaches_the_backend(oai: openai.OpenAI, fake: FakeAnthropic,
                                                   stream: bool) -> None:
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "Extract the total"},
                                     {"type": "image_url", "image_url": {"url": DATA_URL}}]},
        {"role": "assistant", "content": '{"'}]
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in oai.chat.completions.create(
            model=SEEING, messages=messages, stream=True) if c.choices)
    else:
        text = oai.chat.completions.create(model=SEEING, messages=messages
                                           ).choices[0].message.content or ""
    assert text == 'total": 12.5}'  # the continuation, as the OpenAI wire returns it
    assert _image_sent(fake) == EXPECTED_BLOCK
    assert fake.last_body["messages"][-1] == {"role": "assistant", "content": '{"'}


def test_anthropic_image_block_reaches_the_backend(claude: anthropic.Anthropic,
                                                   fake: FakeAnthropic, server: Server) -> None:
    reply = claude.messages.create(model=SEEING, max_tokens=50, messages=[
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": B64}},
            {"type": "text", "text": "Extract the total"}]},
        {"role": "assistant", "content": '{"'}])
    assert reply.content[0].type == "text" and reply.content[0].text == 'total": 12.5}'
    assert _image_sent(fake) == EXPECTED_BLOCK
    with sqlite3.connect(server.user_dir / "logs.db") as db:
        rows = db.execute("select type, size, content from attachments").fetchall()
    assert ("image/png", len(IMAGE), None) in rows  # logged by type and size, no content


def test_a_backend_that_cannot_see_is_a_400_in_each_wires_shape(
        oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=BLIND, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What?"},
            {"type": "image_url", "image_url": {"url": DATA_URL}}]}])
    body: Any = caught.value.body
    assert body["code"] == "attachments_unsupported"
    assert "test-eats cannot take attachments" in body["message"]
    assert "claude-" in body["message"]  # names models that can
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model=BLIND, max_tokens=10, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": B64}},
            {"type": "text", "text": "What?"}]}])
    error: Any = refused.value.body
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "cannot take attachments" in error["error"]["message"]


def test_an_image_by_url_is_refused_and_never_fetched(
        oai: openai.OpenAI, claude: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/image.png"
    sent = len(fake.requests)
    try:
        with pytest.raises(openai.BadRequestError, match="does not fetch URLs"):
            oai.chat.completions.create(model=SEEING, messages=[{"role": "user", "content": [
                {"type": "text", "text": "What?"},
                {"type": "image_url", "image_url": {"url": url}}]}])
        with pytest.raises(anthropic.BadRequestError, match="does not fetch URLs"):
            claude.messages.create(model=SEEING, max_tokens=10, messages=[
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "url", "url": url}},
                    {"type": "text", "text": "What?"}]}])
    finally:
        web.shutdown()
        web.server_close()
    assert _Counting.hits == 0
    assert len(fake.requests) == sent


@pytest.mark.parametrize(("url", "message"), [
    ("data:image/png;base64,%%%not-base64", "not valid base64"),
    ("data:image/png;base64," + base64.b64encode(JPEG).decode(),
     "declared image/png but its data is image/jpeg"),
    ("data:image/png," + B64, "base64 content is expected"),
])
def test_bad_image_data_is_a_400(oai: openai.OpenAI, url: str, message: str) -> None:
    with pytest.raises(openai.BadRequestError, match=message):
        oai.chat.completions.create(model=SEEING, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": url}}]}])


def test_an_image_in_the_prefill_is_a_400(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="prefill"):
        claude.messages.create(model=SEEING, max_tokens=10, messages=[
            {"role": "user", "content": "What?"},
            {"role": "assistant", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": B64}}]}])

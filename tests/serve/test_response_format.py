"""OpenAI's response_format on llmcli serve: mapped to the model's schema support (the test
models validate; their replies are "reply to: PROMPT")."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from llmcli.serve.errors import WireError
from llmcli.serve.protocol import OpenAIRequest, openai_chat
from tests.serve.conftest import API_KEY, Server

AUTH = {"Authorization": f"Bearer {API_KEY}"}
STRING = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "string"}}}


def post(server: Server, **body: Any) -> httpx.Response:
    return httpx.post(server.v1 + "/chat/completions", headers=AUTH, timeout=60,
                      json={"model": "test-eats", **body})


def chat_of(response_format: Any) -> Any:
    return openai_chat(OpenAIRequest(messages=[{"role": "user", "content": "x"}],
                                     response_format=response_format))


def test_response_format_kinds() -> None:
    assert chat_of(None).schema is None
    assert chat_of({"type": "text"}).schema is None
    assert chat_of({"type": "json_object"}).schema == {"type": "object"}
    assert chat_of(STRING).schema == {"type": "string"}
    with pytest.raises(WireError, match="not supported"):
        chat_of({"type": "yaml"})
    with pytest.raises(WireError, match="must be a JSON Schema"):
        chat_of({"type": "json_schema", "json_schema": {"name": "s"}})


@pytest.mark.parametrize("stream", [False, True])
def test_a_conforming_reply_is_served_and_logged_with_its_schema(server: Server,
                                                                 stream: bool) -> None:
    # Prefill '"' and a prompt ending in '"': the test model's reply is a JSON string.
    reply = post(server, response_format=STRING, stream=stream, messages=[
        {"role": "user", "content": 'Say"'}, {"role": "assistant", "content": '"'}])
    assert reply.status_code == 200, reply.text
    if not stream:
        assert reply.json()["choices"][0]["message"]["content"] == 'reply to: Say"'
    row = server.rows()[-1]
    assert row["text"] == '"reply to: Say"' and row["schema_id"]


def test_replies_that_keep_failing_the_schema(server: Server) -> None:
    reply = post(server, response_format=STRING,
                 messages=[{"role": "user", "content": "Say"}])
    assert reply.status_code == 502
    error = reply.json()["error"]
    assert error["code"] == "schema_validation_failed" and "after 3 attempts" in error["message"]


def test_an_invalid_schema_is_a_400(server: Server) -> None:
    reply = post(server, messages=[{"role": "user", "content": "Say"}], response_format={
        "type": "json_schema", "json_schema": {"name": "s", "schema": {"type": 5}}})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "response_format"

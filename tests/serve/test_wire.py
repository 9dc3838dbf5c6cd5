"""Both wires over the test models (one per capability), through the official SDKs, httpx
and the seed's own request shape: every dialect, capability and stream mode gives the same
content; bad input, auth and logging."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.serve.conftest import API_KEY, Server

CAPABLE = ["test-eats", "test-echoes", "test-emulated"]
PROMPT = "Name a state"
PREFILL = "The state is"
CONTINUATION = f"reply to: {PROMPT}"  # what every test model continues with
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def openai_messages(dialect: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages and extra fields of each OpenAI-wire prefill dialect."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": PROMPT}]
    final: dict[str, Any] = {"role": "assistant", "content": PREFILL}
    extra: dict[str, Any] = {}
    if dialect == "prefix":  # Mistral, DeepSeek
        final["prefix"] = True
    elif dialect == "continue":  # vLLM
        extra = {"continue_final_message": True, "add_generation_prompt": False}
    elif dialect == "parts":  # list-of-text-parts content, simply last (llama.cpp)
        final["content"] = [{"type": "text", "text": PREFILL[:4]},
                            {"type": "text", "text": PREFILL[4:]}]
    return [*messages, final], extra


def sse_data(text: str) -> list[Any]:
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


@pytest.fixture(scope="module")
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def claude(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0)


# -- every dialect × capability × stream mode -------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", CAPABLE)
@pytest.mark.parametrize("dialect", ["prefix", "continue", "last", "parts"])
def test_openai_sdk_content_is_the_continuation(oai: openai.OpenAI, dialect: str, model: str,
                                                stream: bool) -> None:
    messages, extra = openai_messages(dialect)
    if stream:
        chunks = list(oai.chat.completions.create(
            model=model, messages=messages, stream=True, extra_body=extra,  # type: ignore[arg-type]
            stream_options={"include_usage": True}))
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage is not None and chunks[-1].choices == []
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    else:
        completion = oai.chat.completions.create(model=model, messages=messages,  # type: ignore[arg-type]
                                                 extra_body=extra)
        content = completion.choices[0].message.content
        assert completion.choices[0].finish_reason == "stop"
    assert content == CONTINUATION


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", CAPABLE)
def test_vllm_echo_gives_prefill_and_continuation(server: Server, model: str,
                                                  stream: bool) -> None:
    messages, extra = openai_messages("continue")
    body = {"model": model, "messages": messages, "echo": True, "stream": stream, **extra}
    reply = httpx.post(server.v1 + "/chat/completions", json=body, headers=AUTH, timeout=30)
    assert reply.status_code == 200
    if stream:
        content = "".join(c["choices"][0]["delta"].get("content") or ""
                          for c in sse_data(reply.text) if c["choices"])
    else:
        content = reply.json()["choices"][0]["message"]["content"]
    assert content == PREFILL + CONTINUATION


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", CAPABLE)
def test_anthropic_sdk_text_is_the_continuation(claude: anthropic.Anthropic, model: str,
                                                stream: bool) -> None:
    messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": PREFILL}]
    if stream:
        with claude.messages.stream(model=model, max_tokens=50,
                                    messages=messages) as events:  # type: ignore[arg-type]
            text = "".join(events.text_stream)
            final = events.get_final_message()
        assert final.content[0].text == text  # type: ignore[union-attr]
    else:
        final = claude.messages.create(model=model, max_tokens=50,
                                       messages=messages)  # type: ignore[arg-type]
        text = final.content[0].text  # type: ignore[union-attr]
    assert text == CONTINUATION
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_no_prefill_and_history_and_system(oai: openai.OpenAI, server: Server) -> None:
    completion = oai.chat.completions.create(model="t-eats", messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": PROMPT},
    ])
    assert completion.choices[0].message.content == CONTINUATION
    assert completion.model == "test-eats"  # an alias resolves to the model's id
    row = server.rows()[-1]
    assert (row["prompt"], row["system"], row["prefill"]) == (PROMPT, "Be brief.", "")


def test_missing_model_means_the_default(server: Server) -> None:
    reply = httpx.post(server.v1 + "/chat/completions", headers=AUTH, timeout=30,
                       json={"messages": [{"role": "user", "content": PROMPT}]})
    assert reply.json()["model"] == "test-eats"


def test_seed_call_shape(server: Server) -> None:
    # The seed's own shape: requests-style JSON, "prefix": true and "seed": 0. The test
    # models take no seed, so this is the 400 that names the field; the Mistral and SmolLM2
    # tests send the same shape to models that take it.
    body = {"model": "test-eats", "seed": 0, "max_tokens": 20,
            "messages": [{"role": "user", "content": PROMPT},
                         {"role": "assistant", "content": PREFILL, "prefix": True}]}
    reply = httpx.post(server.v1 + "/chat/completions", json=body, headers=AUTH, timeout=30)
    assert reply.status_code == 400
    assert "'seed'" in reply.json()["error"]["message"]
    del body["seed"]
    reply = httpx.post(server.v1 + "/chat/completions", json=body, headers=AUTH, timeout=30)
    assert reply.json()["choices"][0]["message"]["content"] == CONTINUATION


# -- models --------------------------------------------------------------------------------


def test_models_list_with_prefill_support(oai: openai.OpenAI, server: Server) -> None:
    listed = {m.id: m.model_extra["prefill_support"] for m in oai.models.list()}  # type: ignore[index]
    assert listed == {"test-eats": "eats", "test-echoes": "echoes",
                      "test-emulated": "emulated", "test-unsupported": "unsupported",
                      "test-keyed": "eats", "test-tools": "eats"}
    ant = httpx.get(server.v1 + "/models", headers={**AUTH, "anthropic-version": "2023-06-01"})
    assert {m["id"] for m in ant.json()["data"]} == set(listed)
    assert ant.json()["has_more"] is False


# -- bad input -----------------------------------------------------------------------------


def post(server: Server, body: Any, path: str = "/chat/completions",
         headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
    if not isinstance(body, bytes | str):
        kwargs["json"] = body
    else:
        kwargs["content"] = body
    headers = {"Content-Type": "application/json", **(headers or AUTH)}
    return httpx.post(server.v1 + path, headers=headers, timeout=30, **kwargs)


USER = [{"role": "user", "content": PROMPT}]


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b'{"messages": [', 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"messages": "hello"}, 400, "'messages'"),
    ({"messages": USER, "temperature": "hot"}, 400, "'temperature'"),
    ({"messages": []}, 400, "'messages'"),
    ({"model": "no-such-model", "messages": USER}, 404, "Unknown model: 'no-such-model'"),
    ({"model": "test-eats", "messages": USER, "temperature": 0.2}, 400,
     "does not take 'temperature'"),
    ({"model": "test-eats", "messages": USER, "top_p": 0.5}, 400, "'top_p'"),
    ({"model": "test-eats", "messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "test-unsupported",
      "messages": [*USER, {"role": "assistant", "content": PREFILL}]}, 400,
     "does not support prefill"),
    ({"messages": [*USER, {"role": "assistant", "content": PREFILL}],
      "continue_final_message": True, "add_generation_prompt": True}, 400,
     "Cannot set both continue_final_message and add_generation_prompt"),
    ({"messages": USER, "continue_final_message": True, "add_generation_prompt": False}, 400,
     "final message is not from the assistant"),
    ({"messages": [{"role": "tool", "content": "x"}, *USER]}, 400, "'tool'"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     400, "only text, image and document content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "image_url.url is required"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "must end with a user"),
    ({"messages": USER, "n": 2}, 400, "n=1"),
    ({"model": "test-keyed", "messages": USER}, 503, "needs an API key"),
])
def test_bad_openai_input(server: Server, body: Any, status: int, needle: str) -> None:
    reply = post(server, body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert needle in error["message"]
    assert set(error) >= {"message", "type", "code"}
    assert "Traceback" not in reply.text


def test_unknown_fields_are_ignored(server: Server) -> None:
    reply = post(server, {"messages": USER, "frequency_penalty_v9": 1, "user": "x",
                          "metadata": {"a": 1}})
    assert reply.status_code == 200


def test_prefill_refused_before_any_upstream_call_and_sdk_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="does not support prefill"):
        oai.chat.completions.create(model="test-unsupported", messages=[
            {"role": "user", "content": PROMPT}, {"role": "assistant", "content": PREFILL}])
    with pytest.raises(openai.NotFoundError, match="Unknown model"):
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    # Without a prefill the same model answers.
    completion = oai.chat.completions.create(model="test-unsupported", messages=[
        {"role": "user", "content": PROMPT}])
    assert completion.choices[0].message.content == CONTINUATION


def test_bad_anthropic_input(claude: anthropic.Anthropic, server: Server) -> None:
    with pytest.raises(anthropic.BadRequestError, match="does not support prefill"):
        claude.messages.create(model="test-unsupported", max_tokens=10, messages=[
            {"role": "user", "content": PROMPT}, {"role": "assistant", "content": PREFILL}])
    with pytest.raises(anthropic.NotFoundError, match="Unknown model"):
        claude.messages.create(model="nope", max_tokens=10,
                               messages=[{"role": "user", "content": "x"}])
    reply = post(server, b"{", path="/messages")
    assert reply.status_code == 400
    assert reply.json()["type"] == "error"
    assert reply.json()["error"]["type"] == "invalid_request_error"


# -- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"x-api-key": API_KEY}])
def test_openai_wire_needs_the_bearer_key(server: Server, headers: dict[str, str]) -> None:
    reply = httpx.post(server.v1 + "/chat/completions", json={"messages": USER},
                       headers=headers, timeout=30)
    assert reply.status_code == 401
    assert reply.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.v1 + "/models", headers=headers).status_code == 401
    assert API_KEY not in reply.text


def test_anthropic_wire_takes_x_api_key_or_bearer(server: Server) -> None:
    body = {"model": "test-eats", "max_tokens": 10, "messages": USER}
    for headers in ({"x-api-key": API_KEY}, AUTH):
        assert post(server, body, "/messages", headers=headers).status_code == 200
    reply = post(server, body, "/messages", headers={"x-api-key": "wrong"})
    assert reply.status_code == 401
    assert reply.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(
            model="test-eats", max_tokens=10, messages=[{"role": "user", "content": "x"}])


def test_unknown_path_is_an_openai_error(server: Server) -> None:
    reply = httpx.get(server.v1 + "/nothing", headers=AUTH)
    assert reply.status_code == 404
    assert "no such endpoint" in reply.json()["error"]["message"]


# -- logging ---------------------------------------------------------------------------------


def test_every_exchange_is_logged(oai: openai.OpenAI, server: Server) -> None:
    oai.chat.completions.create(model="test-echoes", messages=[
        {"role": "user", "content": "log me"},
        {"role": "assistant", "content": PREFILL, "prefix": True}])  # type: ignore[list-item]
    row = server.rows()[-1]
    assert row["prompt"] == "log me"
    assert row["prefill"] == PREFILL
    assert row["prefill_support"] == "echoes"
    assert row["text"] == PREFILL + "reply to: log me"
    assert row["status"] == "complete"
    logged = json.dumps(server.rows())
    assert API_KEY not in logged


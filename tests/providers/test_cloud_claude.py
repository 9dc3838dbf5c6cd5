"""Claude on Amazon Bedrock (``bedrock/...``) and Google Vertex AI (``vertex/...``) through
the anthropic SDK's ``AnthropicBedrock`` and ``AnthropicVertex`` over real HTTP against
tests/fakes/cloud.py: each platform's paths, authentication (a SigV4 signature the fake
recomputes; a Bedrock API key; a Vertex access token), version field and stream framing
(AWS event stream; SSE), with the prefill contract on top: native (eaten) up to Claude 4.5,
emulated from 4.6, exactly once, streamed or not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from llmcli_anthropic import BedrockClaude, VertexClaude
from llmcli_anthropic._cloud import claude_id_of

import llmcli
from llmcli import PrefillSupport, emulation_instruction
from llmcli.cli import cli
from llmcli.errors import PartialResponseError, ProviderError, ProviderStatusError
from tests.fakes.cloud import (
    BEDROCK_VERSION,
    VERTEX_VERSION,
    FakeBedrock,
    FakeVertex,
    bedrock_error,
    google_error,
)
from tests.providers.conftest import fast_retries_for_every_sdk

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BEDROCK_NATIVE = "bedrock/anthropic.claude-sonnet-4-5-20250929-v1:0"
BEDROCK_NEW = "bedrock/anthropic.claude-opus-4-6-v1"
VERTEX_NATIVE = "vertex/claude-sonnet-4-5@20250929"
VERTEX_NEW = "vertex/claude-opus-4-6"


#: What the bedrock extra (anthropic[bedrock]>=1.0) adds over the plugin's own bound: an API
#: key, and a missing region refused. make test-oldest-sdks runs the plugin's own bound.
NEEDS_BEDROCK_EXTRA = pytest.mark.skipif(
    int(__import__("anthropic").__version__.split(".")[0]) < 1,
    reason="needs the bedrock extra's anthropic>=1.0")


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_retries_for_every_sdk(monkeypatch)


@pytest.fixture
def bedrock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
            load_plugins: Callable[..., None]) -> Iterator[FakeBedrock]:
    with FakeBedrock() as fake:
        for name in ("AWS_PROFILE", "AWS_BEARER_TOKEN_BEDROCK", "AWS_SESSION_TOKEN",
                     "AWS_DEFAULT_REGION"):
            monkeypatch.delenv(name, raising=False)
        # No ~/.aws is read: the credentials come from the environment only.
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", fake.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", fake.secret_key)
        monkeypatch.setenv("AWS_REGION", fake.region)
        monkeypatch.setenv("ANTHROPIC_BEDROCK_BASE_URL", fake.url)
        load_plugins("llmcli-anthropic")
        yield fake


@pytest.fixture
def vertex(monkeypatch: pytest.MonkeyPatch,
           load_plugins: Callable[..., None]) -> Iterator[FakeVertex]:
    with FakeVertex() as fake:
        monkeypatch.setenv("CLOUD_ML_REGION", fake.region)
        monkeypatch.setenv("ANTHROPIC_VERTEX_PROJECT_ID", fake.project)
        monkeypatch.setenv("ANTHROPIC_VERTEX_BASE_URL", fake.url + "/v1")
        # An access token given to the client: no Google credentials are looked up.
        monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", fake.api_key)
        load_plugins("llmcli-anthropic")
        yield fake


def ask(model: str, prefill: str | None = '["', stream: bool = True,
        **kwargs: Any) -> llmcli.Response:
    kwargs.setdefault("log", False)
    return llmcli.get_model(model).prompt("List two letters as JSON.", prefill=prefill,
                                          stream=stream, **kwargs)


def posts(fake: Any) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST"]


# -- ids and capabilities ----------------------------------------------------------------------


@pytest.mark.parametrize(("platform_id", "claude"), [
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929-v1"),
    ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5-20251001-v1"),
    ("global.anthropic.claude-opus-4-6-v1", "claude-opus-4-6-v1"),
    ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
    ("claude-opus-4-6", "claude-opus-4-6"),
])
def test_claude_id_inside_platform_ids(platform_id: str, claude: str) -> None:
    assert claude_id_of(platform_id) == claude


@pytest.mark.parametrize(("name", "support"), [
    (BEDROCK_NATIVE, PrefillSupport.EATS_PREFIX),
    ("bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0", PrefillSupport.EATS_PREFIX),
    ("bedrock/anthropic.claude-3-7-sonnet-20250219-v1:0", PrefillSupport.EATS_PREFIX),
    (BEDROCK_NEW, PrefillSupport.EMULATED),
    ("bedrock/global.anthropic.claude-sonnet-4-6", PrefillSupport.EMULATED),
    # A provisioned-throughput ARN says no version: emulated, never the 400.
    ("bedrock/arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc",
     PrefillSupport.EMULATED),
    (VERTEX_NATIVE, PrefillSupport.EATS_PREFIX),
    ("vertex/claude-haiku-4-5@20251001", PrefillSupport.EATS_PREFIX),
    (VERTEX_NEW, PrefillSupport.EMULATED),
    ("vertex/claude-opus-4-7", PrefillSupport.EMULATED),
])
def test_capability_per_model(name: str, support: PrefillSupport,
                              load_plugins: Callable[..., None]) -> None:
    load_plugins("llmcli-anthropic")
    model = llmcli.get_model(name)
    assert model.get_prefill_support(model.Options()) is support
    assert model.needs_key is None  # the platform's own credentials, optional bearer


def test_models_listing_shows_every_cloud_model(load_plugins: Callable[..., None]) -> None:
    import json

    load_plugins("llmcli-anthropic")
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    listed = {m["model_id"]: m for m in json.loads(result.stdout)}
    assert listed[BEDROCK_NATIVE]["prefill_support"] == "eats"
    assert listed[BEDROCK_NEW]["prefill_support"] == "emulated"
    assert listed[VERTEX_NATIVE]["prefill_support"] == "eats"
    assert listed[VERTEX_NEW]["prefill_support"] == "emulated"
    assert "aws_region" in listed[BEDROCK_NATIVE]["options"]
    assert "project_id" in listed[VERTEX_NATIVE]["options"]
    table = CliRunner().invoke(cli, ["models"]).stdout
    assert "bedrock/anthropic.claude-opus-4-6-v1" in table
    assert "vertex/claude-haiku-4-5@20251001" in table


# -- Bedrock -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_bedrock_native_prefill_once(bedrock: FakeBedrock, stream: bool) -> None:
    bedrock.reply = 'a", "b"]'
    response = ask(BEDROCK_NATIVE, stream=stream)
    assert response.text() == '["a", "b"]'
    assert response.prefill_support is PrefillSupport.EATS_PREFIX
    (request,) = posts(bedrock)
    suffix = "invoke-with-response-stream" if stream else "invoke"
    assert request.path == f"/model/anthropic.claude-sonnet-4-5-20250929-v1:0/{suffix}"
    assert request.body["anthropic_version"] == BEDROCK_VERSION
    assert "model" not in request.body and "stream" not in request.body
    assert request.body["messages"][-1] == {"role": "assistant", "content": '["'}
    assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
    assert bedrock.auth_used == ["sigv4"]  # and the fake checked the signature
    usage = response.usage()
    assert usage.input_tokens and usage.output_tokens and usage.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("reply", ['["a", "b"]', 'a", "b"]', 'Sure:\n["a", "b"]'])
def test_bedrock_new_models_emulate(bedrock: FakeBedrock, stream: bool, reply: str) -> None:
    bedrock.reply = reply
    response = ask(BEDROCK_NEW, stream=stream)
    assert response.text() == '["a", "b"]'
    body = posts(bedrock)[-1].body
    assert body["messages"][-1]["role"] == "user"
    assert body["system"] == emulation_instruction('["')


def test_bedrock_trailing_whitespace_and_inference_profile(bedrock: FakeBedrock) -> None:
    bedrock.reply = " 42."
    model = "bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0"
    assert ask(model, prefill="Answer: ").text() == "Answer: 42."
    request = posts(bedrock)[-1]
    assert request.path.startswith("/model/us.anthropic.claude-haiku-4-5-20251001-v1:0/")
    assert request.body["messages"][-1]["content"] == "Answer:"


@NEEDS_BEDROCK_EXTRA
def test_bedrock_api_key_is_a_bearer_and_never_shown(bedrock: FakeBedrock,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", bedrock.api_key)
    bedrock.reply = 'x"]'
    assert ask(BEDROCK_NATIVE).text() == '["x"]'
    assert bedrock.auth_used == ["bearer"]
    # A stored key (llmcli keys set bedrock) works the same way.
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK")
    assert CliRunner().invoke(cli, ["keys", "set", "bedrock", "--value", "wrong-key-123456"]
                              ).exit_code == 0
    response = ask(BEDROCK_NATIVE, log=True)
    with pytest.raises(ProviderStatusError) as info:
        response.text()
    assert info.value.status == 403 and info.value.provider == "bedrock"
    assert str(info.value).startswith("Bedrock refused the request (403): Authentication failed")
    assert "wrong-key-123456" not in str(info.value)
    logged = CliRunner().invoke(cli, ["logs", "--json", "-n", "1"]).stdout
    assert "wrong-key-123456" not in logged and "bedrock" in logged


def test_bedrock_wrong_signature_is_refused(bedrock: FakeBedrock) -> None:
    bedrock.secret_key = "another-secret-key-entirely-000000000000"
    with pytest.raises(ProviderStatusError) as info:
        ask(BEDROCK_NATIVE).text()
    assert "signature we calculated does not match" in str(info.value)
    assert len(posts(bedrock)) == 1  # a 403 is not retried


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("status", "start"), [
    (401, "Bedrock rejected the API key (401): bad token. AWS credentials come from"),
    (429, "Bedrock rate limit (429) after 2 retries: Too many requests"),
    (503, "Bedrock server error (503) after 2 retries: Service unavailable"),
])
def test_bedrock_errors_mapped(bedrock: FakeBedrock, stream: bool, status: int,
                               start: str) -> None:
    message = {401: "bad token", 429: "Too many requests, please wait before trying again.",
               503: "Service unavailable"}[status]
    bedrock.enqueue(*[bedrock_error(status, message)] * 3)
    with pytest.raises(ProviderStatusError) as info:
        ask(BEDROCK_NATIVE, stream=stream).text()
    assert str(info.value).startswith(start), str(info.value)
    assert info.value.status == status
    assert len(posts(bedrock)) == (1 if status == 401 else 3)


def test_bedrock_429_retried_then_succeeds(bedrock: FakeBedrock) -> None:
    bedrock.enqueue(bedrock_error(429, "Too many requests", {"retry-after": "0"}))
    bedrock.reply = 'a"]'
    assert ask(BEDROCK_NATIVE).text() == '["a"]'
    assert len(posts(bedrock)) == 2


def test_bedrock_exception_mid_stream_is_partial(bedrock: FakeBedrock) -> None:
    bedrock.reply = 'a", "b", "c"]'
    bedrock.error_after_deltas = 2
    response = ask(BEDROCK_NATIVE, log=True)
    with pytest.raises(PartialResponseError) as info:
        response.text()
    assert info.value.status == 503
    assert response.text_so_far() == '["a", "b'
    assert response.status == "partial"


def test_bedrock_broken_stream_is_partial(bedrock: FakeBedrock) -> None:
    bedrock.reply = 'a", "b", "c", "d"]'
    bedrock.cut_after = 5  # message_start, block start, ping, two deltas
    response = ask(BEDROCK_NATIVE)
    with pytest.raises(PartialResponseError):
        response.text()
    assert response.text_so_far() == '["a", "b'


@NEEDS_BEDROCK_EXTRA
def test_bedrock_without_region_is_one_clear_line(bedrock: FakeBedrock,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION")
    result = CliRunner().invoke(cli, ["-m", BEDROCK_NATIVE, "hi"])
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in result.output
    assert "region" in err.lower() and "AWS_REGION" in err
    assert posts(bedrock) == []


def test_bedrock_region_option_reaches_the_signature(bedrock: FakeBedrock) -> None:
    bedrock.reply = "ok"
    with pytest.raises(ProviderError, match="scoped to a valid region"):
        ask(BEDROCK_NATIVE, prefill=None, aws_region="eu-west-1").text()
    assert ask(BEDROCK_NATIVE, prefill=None, aws_region="us-east-1").text() == "ok"


def test_bedrock_cli_prefill(bedrock: FakeBedrock) -> None:
    bedrock.reply = 'a", "b"]'
    result = CliRunner().invoke(cli, ["-m", "bedrock-sonnet-4.5", "--prefill", '["', "q"])
    assert result.exit_code == 0, result.output
    assert result.stdout == '["a", "b"]\n'


# -- Vertex AI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_vertex_native_prefill_once(vertex: FakeVertex, stream: bool) -> None:
    vertex.reply = 'a", "b"]'
    response = ask(VERTEX_NATIVE, stream=stream)
    assert response.text() == '["a", "b"]'
    (request,) = posts(vertex)
    method = "streamRawPredict" if stream else "rawPredict"
    assert request.path == ("/v1/projects/llmcli-test/locations/us-east5/publishers/anthropic/"
                            f"models/claude-sonnet-4-5@20250929:{method}")
    assert request.headers["authorization"] == f"Bearer {vertex.api_key}"
    assert request.body["anthropic_version"] == VERTEX_VERSION
    assert request.body["messages"][-1] == {"role": "assistant", "content": '["'}
    assert response.usage().stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [True, False])
def test_vertex_new_models_emulate(vertex: FakeVertex, stream: bool) -> None:
    vertex.reply = 'Here:\n["a", "b"]'
    assert ask(VERTEX_NEW, stream=stream).text() == '["a", "b"]'
    assert posts(vertex)[-1].body["messages"][-1]["role"] == "user"


def test_vertex_project_and_region_options(vertex: FakeVertex,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_VERTEX_PROJECT_ID")
    monkeypatch.delenv("CLOUD_ML_REGION")
    vertex.reply = "ok"
    assert ask(VERTEX_NATIVE, prefill=None, project_id="llmcli-test",
               region="us-east5").text() == "ok"
    result = CliRunner().invoke(cli, ["-m", VERTEX_NATIVE, "hi"])
    assert result.exit_code == 1 and "CLOUD_ML_REGION" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("status", "start"), [
    (401, "Vertex AI rejected the API key (401): Request had invalid authentication"),
    (429, "Vertex AI rate limit (429) after 2 retries: Quota exceeded"),
    (500, "Vertex AI server error (500) after 2 retries: Internal error"),
])
def test_vertex_errors_mapped(vertex: FakeVertex, stream: bool, status: int,
                              start: str) -> None:
    message = {401: "Request had invalid authentication credentials.",
               429: "Quota exceeded for aiplatform.googleapis.com", 500: "Internal error"}[status]
    vertex.enqueue(*[google_error(status, message)] * 3)
    with pytest.raises(ProviderStatusError) as info:
        ask(VERTEX_NATIVE, stream=stream).text()
    assert str(info.value).startswith(start), str(info.value)
    assert vertex.api_key not in str(info.value)


def test_vertex_bad_token_never_shown(vertex: FakeVertex,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.not-the-right-token-987654")
    result = CliRunner().invoke(cli, ["-m", VERTEX_NATIVE, "--prefill", "x", "hi"])
    assert result.exit_code == 1
    assert "rejected the API key (401)" in result.stderr
    assert "not-the-right-token" not in result.output
    logged = CliRunner().invoke(cli, ["logs", "--json", "-n", "1"]).stdout
    assert "not-the-right-token" not in logged


def test_vertex_fake_is_faithful(vertex: FakeVertex) -> None:
    """What the plugin avoids really fails on the fake: the first-party version field (what
    the SDK sends by default since it pinned 2026-10-21)."""
    import anthropic

    client: Any = anthropic.AnthropicVertex(region=vertex.region, project_id=vertex.project,
                                            access_token=vertex.api_key, max_retries=0,
                                            base_url=vertex.url + "/v1")
    with pytest.raises(anthropic.BadRequestError, match="anthropic_version"):
        client.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=10,
                               messages=[{"role": "user", "content": "q"}],
                               extra_body={"anthropic_version": "2026-10-21"})


def test_bedrock_fake_is_faithful(bedrock: FakeBedrock) -> None:
    import anthropic

    client: Any = anthropic.AnthropicBedrock(aws_region=bedrock.region, max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="Invalid API version"):
        client.messages.create(model="anthropic.claude-sonnet-4-5-20250929-v1:0", max_tokens=10,
                               messages=[{"role": "user", "content": "q"}],
                               extra_body={"anthropic_version": "2026-10-21"})


def test_classes_are_exported() -> None:
    assert BedrockClaude("anthropic.claude-haiku-4-5-20251001-v1:0").model_id == (
        "bedrock/anthropic.claude-haiku-4-5-20251001-v1:0")
    assert VertexClaude("claude-haiku-4-5@20251001").model_id == (
        "vertex/claude-haiku-4-5@20251001")


# -- the docs ----------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "providers"


def run_blocks(name: str) -> None:
    text = (DOCS / name).read_text()
    blocks = text.split("```python\n")[1:]
    assert blocks
    for i, block in enumerate(blocks):
        exec(compile(block.split("```")[0], f"{name}[{i}]", "exec"), {})


def rows_match_capability(name: str, models: Any, cls: Any) -> None:
    lines = (DOCS / name).read_text().splitlines()
    for platform_id, aliases in models:
        model = cls(platform_id, aliases)
        row = next(line for line in lines if line.startswith(f"| `{model.model_id}` |"))
        kind = ("native (eats)" if model.prefill_support is PrefillSupport.EATS_PREFIX
                else "emulated")
        assert row.endswith(f"| {kind} |") and f"`{aliases[0]}`" in row, row


def test_bedrock_docs_examples_run(bedrock: FakeBedrock,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from llmcli_anthropic._cloud import BEDROCK_MODELS

    bedrock.reply = "2, 3]"
    run_blocks("bedrock.md")
    assert capsys.readouterr().out.splitlines() == ["eats", "[2, 3]", "emulated"]
    rows_match_capability("bedrock.md", BEDROCK_MODELS, BedrockClaude)


def test_vertex_docs_examples_run(vertex: FakeVertex, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from llmcli_anthropic._cloud import VERTEX_MODELS

    monkeypatch.delenv("CLOUD_ML_REGION")  # the example names its region and project
    monkeypatch.delenv("ANTHROPIC_VERTEX_PROJECT_ID")
    vertex.reply = "2, 3]"
    run_blocks("vertex.md")
    assert capsys.readouterr().out.splitlines() == ["[2, 3]", "emulated"]
    rows_match_capability("vertex.md", VERTEX_MODELS, VertexClaude)


def test_old_sdks_stream_exception_is_read() -> None:
    """anthropic SDKs before 2.x raise a Bedrock stream exception as a ValueError holding the
    decoded message; the plugin reads its type and message from it (no network)."""
    from botocore.eventstream import EventStreamBuffer
    from llmcli_anthropic._cloud import stream_exception

    from tests.fakes.cloud import bedrock_exception

    buffer = EventStreamBuffer()
    buffer.add_data(bedrock_exception("serviceUnavailableException", "The model is busy."))
    (message,) = list(buffer)
    exc = ValueError(f"Bad response code, expected 200: {message.to_response_dict()}")
    fault = stream_exception(exc)
    assert fault is not None
    assert (fault.status, fault.message, fault.kind) == (
        503, "The model is busy.", "serviceUnavailableException")
    assert stream_exception(ValueError("something else")) is None


@pytest.mark.parametrize("stream", [True, False])
def test_bedrock_schema_is_validated_not_sent(bedrock: FakeBedrock, stream: bool) -> None:
    bedrock.reply = '{"n": 3}'
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    response = ask(BEDROCK_NATIVE, prefill=None, schema=schema, stream=stream)
    assert response.json() == {"n": 3}
    body = posts(bedrock)[-1].body
    assert "output_config" not in body
    assert '"n"' in body["messages"][-1]["content"]  # the validated mode's instruction

"""llmcli.remote, the provider kit: the shared wording, scrub, key hints, the resolver helper,
and the execute template run against a stand-in SDK (the plugin example in docs/plugins.md,
which this module runs). The bundled providers through their real SDKs: tests/providers/ and
the fault matrix, tests/hardening/test_provider_faults.py."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llmcli
from llmcli import config, plugins
from llmcli.errors import (
    BrokenStreamError,
    PartialResponseError,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from llmcli.models import KeySpec
from llmcli.remote import key_hint, resolve_prefixed, scrub, status_error, transport_error

DOCS = Path(__file__).resolve().parent.parent / "docs"

# -- the wording every provider shares --------------------------------------------------------


@pytest.mark.parametrize(("status", "expected"), [
    (401, "Acme rejected the API key (401): bad key. Run 'llmcli keys set acme'."),
    (403, "Acme refused the request (403): no access. Check the key: Run 'llmcli keys set "
          "acme'."),
    (404, "Acme found nothing there (404): no model. Check the model name"),
    (429, "Acme rate limit (429) after 2 retries: slow down. Wait, or raise -o max_retries."),
    (529, "Acme is overloaded (529) after 2 retries: busy. Try again later."),
    (503, "Acme server error (503) after 2 retries: oops"),
    (400, "Acme rejected the request (400, invalid_request_error): bad\nvalue"),
])
def test_http_status_error_wording(status: int, expected: str) -> None:
    detail = {401: "bad key.", 403: "no access", 404: "no model", 429: "slow down",
              529: "busy", 503: "oops", 400: "bad\nvalue"}[status]
    # 529 is no core status: Anthropic declares it as its own (status_phrases).
    error = status_error(
        "Acme", status, detail, key_hint="Run 'llmcli keys set acme'.",
        retried=" after 2 retries", kind="invalid_request_error",
        not_found_hint="Check the model name",
        phrases={529: ("is overloaded", "Try again later.")})
    assert str(error) == " ".join(expected.split())  # always one line
    assert error.status == status and error.provider == "acme"
    assert isinstance(error, ProviderStatusError)


def test_a_status_no_provider_declared_is_a_server_error() -> None:
    assert str(status_error("Acme", 529, "busy")) == "Acme server error (529): busy"


@pytest.mark.parametrize(("kind", "kwargs", "expected", "error_type"), [
    ("timeout", {"limit": 30, "retried": " after 2 retries"},
     "Acme did not answer within 30s after 2 retries; raise -o timeout", ProviderTimeoutError),
    ("timeout", {}, "Acme did not answer within the time limit; raise -o timeout",
     ProviderTimeoutError),
    ("connect", {"url": "http://127.0.0.1:9/v1", "detail": "Connection refused"},
     "Could not connect to Acme at http://127.0.0.1:9/v1: Connection refused",
     ProviderConnectionError),
    ("stream", {"detail": "RemoteProtocolError: peer closed\nconnection"},
     "Acme stream broke off: RemoteProtocolError: peer closed connection", BrokenStreamError),
    ("stalled", {}, "Acme stream stalled past the time limit; raise -o timeout",
     BrokenStreamError),
    ("ended", {"detail": "finish_reason"},
     "Acme: the stream ended before the model finished (no finish_reason)", BrokenStreamError),
    ("malformed", {"detail": "Expecting value: line 1 column 1 (char 0)"},
     "Acme: malformed response from the server (invalid JSON: Expecting value: line 1 column 1 "
     "(char 0))", ProviderError),
    ("other", {"detail": "ValueError: odd"}, "Acme request failed: ValueError: odd",
     ProviderError),
])
def test_transport_error_wording(kind: str, kwargs: dict, expected: str,
                                 error_type: type[ProviderError]) -> None:
    error = transport_error("Acme", kind, **kwargs)
    assert str(error) == expected and error.provider == "acme" and error.status is None
    assert type(error) is error_type


def test_transport_error_does_not_repeat_a_url_the_provider_label_holds() -> None:
    error = transport_error("qwen (http://localhost:11434/v1)", "connect",
                            url="http://localhost:11434/v1", detail="refused", provider_id="qwen")
    assert str(error) == "Could not connect to qwen (http://localhost:11434/v1): refused"


# -- scrub, key hints, names ------------------------------------------------------------------


def test_scrub_masks_keys() -> None:
    assert scrub("key sk-proj-abc123DEF456 bad") == "key [REDACTED] bad"
    assert scrub("given: mysecretvalue", "mysecretvalue") == "given: [REDACTED]"
    assert scrub("Incorrect API key provided: sk-ab******cdef.") == (
        "Incorrect API key provided: [REDACTED].")
    assert scrub("sk-ant-api03-abcdefghijkl and Bearer abc.def") == (
        "[REDACTED] and Bearer [REDACTED]")
    assert scrub("short ab", "ab") == "short ab"  # too short to be a key


def test_scrub_knows_the_keys_llmcli_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_API_KEY", "acme-secret-123")
    assert scrub("echoed acme-secret-123") == "echoed [REDACTED]"


def test_key_hint_from_the_key_spec() -> None:
    assert key_hint(KeySpec("acme", "ACME_API_KEY")) == (
        "Run 'llmcli keys set acme' or set ACME_API_KEY.")
    assert key_hint(KeySpec("box")) == "Run 'llmcli keys set box'."
    assert key_hint(None) == ""


def test_resolve_prefixed() -> None:
    def make(model_id: str) -> Any:
        return llmcli.Model() if model_id else None

    assert resolve_prefixed("acme/x-1", "acme", make) is not None
    for name in ("acme/", "acme/a b", "x-1", "other/x-1"):
        assert resolve_prefixed(name, "acme", make) is None, name
    assert resolve_prefixed("acme-x", "acme", make, bare=lambda n: n.startswith("acme-"))


# -- the template, with the docs' plugin and a stand-in SDK -----------------------------------


class StatusError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class TimeoutException(Exception):
    """Named as httpx names its own: the kit recognises it by name."""


class ConnectError(Exception):
    pass


class Client:
    """The stand-in SDK's client: ``script`` says what the next calls do."""

    script: list[Any] = []
    made: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []
    closed = 0

    def __init__(self, **kwargs: Any) -> None:
        Client.made.append(kwargs)

    def complete(self, *, stream: bool, **params: Any) -> Any:
        Client.sent.append(params)
        action = Client.script.pop(0) if Client.script else "ok"
        if isinstance(action, Exception):
            raise action
        if not stream:
            return {"text": "continued.", "stop": "end_turn"}
        events = [{"type": "text", "text": "conti"}, {"type": "text", "text": "nued."}]
        if action == "cut":
            return self._cut(events)
        return iter(events if action == "unfinished" else
                    [*events, {"type": "end", "stop": "end_turn"}])

    @staticmethod
    def _cut(events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        yield events[0]
        raise ConnectionResetError("peer closed the connection")

    def close(self) -> None:
        Client.closed += 1


@pytest.fixture
def acme(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The plugin from docs/plugins.md, registered, with the stand-in ``acme_sdk``."""
    sdk = types.ModuleType("acme_sdk")
    sdk.Client = Client  # type: ignore[attr-defined]
    sdk.StatusError = StatusError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "acme_sdk", sdk)
    monkeypatch.setattr(Client, "script", [])
    monkeypatch.setattr(Client, "made", [])
    monkeypatch.setattr(Client, "sent", [])
    monkeypatch.setattr(Client, "closed", 0)
    monkeypatch.setenv("ACME_API_KEY", "acme-key-0123456789")
    text = (DOCS / "plugins.md").read_text().split("## Building on llmcli.remote", 1)[1]
    code = re.findall(r"```python\n(.*?)```", text, re.DOTALL)[0]
    module = types.ModuleType("llmcli_acme")
    exec(compile(code, "docs/plugins.md (Building on llmcli.remote)", "exec"), module.__dict__)
    plugins.register_plugin_module("llmcli-acme", module)
    return module


@pytest.mark.parametrize("stream", [True, False])
def test_the_docs_plugin_runs(acme: types.ModuleType, stream: bool) -> None:
    response = llmcli.get_model("acme-1").prompt("Go on", prefill="It ", stream=stream,
                                                log=False, timeout=5)
    assert response.text() == "It continued."
    assert response.stop_reason == "end_turn"
    assert Client.sent[-1]["messages"][-1] == {"role": "assistant", "content": "It "}
    assert Client.made[-1] == {"api_key": "acme-key-0123456789",
                               "base_url": "https://api.acme.example", "timeout": 5.0,
                               "max_retries": 2}
    assert Client.closed == 1
    assert llmcli.get_model("acme/acme-2").model_id == "acme-2"


def test_a_models_own_options_are_listed_first(acme: types.ModuleType) -> None:
    from llmcli.remote import BaseURLOption, RemoteOptions

    class Both(RemoteOptions, BaseURLOption):
        effort: int = 1

    assert list(acme.AcmeOptions.model_fields) == ["max_tokens", "timeout", "max_retries"]
    assert list(Both.model_fields) == ["effort", "timeout", "max_retries", "base_url"]
    assert Both(effort=2, base_url="http://x").base_url == "http://x"


def test_the_endpoint_variable(acme: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_BASE_URL", "http://proxy.example/acme")
    llmcli.get_model("acme-1").prompt("Go on", log=False).text()
    assert Client.made[-1]["base_url"] == "http://proxy.example/acme"


@pytest.mark.parametrize(("failure", "error_type", "message"), [
    (StatusError(401, "who are you"), ProviderStatusError,
     "Acme rejected the API key (401): who are you. Run 'llmcli keys set acme' or set "
     "ACME_API_KEY."),
    (StatusError(429, "slow down, acme-key-0123456789"), ProviderStatusError,
     "Acme rate limit (429) after 2 retries: slow down, [REDACTED]. Wait, or raise -o "
     "max_retries."),
    (TimeoutException("read timed out"), ProviderTimeoutError,
     "Acme did not answer within 300s after 2 retries; raise -o timeout"),
    (ConnectError("refused"), ProviderConnectionError,
     "Could not connect to Acme at https://api.acme.example after 2 retries: refused"),
    (ValueError("odd"), ProviderError, "Acme request failed: ValueError: odd"),
])
def test_failures_become_typed_errors(acme: types.ModuleType, failure: Exception,
                                      error_type: type[ProviderError], message: str) -> None:
    Client.script = [failure]
    response = llmcli.get_model("acme-1").prompt("Go on", log=False)
    with pytest.raises(error_type) as info:
        response.text()
    assert type(info.value) is error_type
    assert str(info.value) == message and info.value.provider == "acme"
    assert info.value.__cause__ is None  # the SDK's chain may hold the request's headers
    assert Client.closed == 1


@pytest.mark.parametrize(("action", "message"), [
    ("cut", "Acme stream broke off: ConnectionResetError: peer closed the connection"),
    ("unfinished", "Acme: the stream ended before the model finished (no finish_reason)"),
])
def test_a_broken_stream_is_partial(acme: types.ModuleType, action: str, message: str) -> None:
    Client.script = [action]
    response = llmcli.get_model("acme-1").prompt("Go on", prefill="It ", log=False)
    with pytest.raises(PartialResponseError) as info:
        response.text()
    assert str(info.value) == (
        message + " (the response broke off; what arrived is logged as partial)")
    assert isinstance(info.value.__cause__, BrokenStreamError)
    assert response.text_so_far().startswith("It conti")
    assert Client.closed == 1


def test_the_errors_md_example_catches_each_type(acme: types.ModuleType) -> None:
    text = (DOCS / "errors.md").read_text().split("### Catching provider failures", 1)[1]
    code = re.findall(r"```python\n(.*?)```", text, re.DOTALL)[0]
    for failure in (TimeoutException(), StatusError(429, "slow down"), "cut"):
        Client.script = [failure]
        namespace = {"model": llmcli.get_model("acme-1")}
        exec(compile(code, "docs/errors.md", "exec"), namespace)
        assert "text" not in namespace  # it failed, and was caught
    assert isinstance(namespace["cause"], BrokenStreamError)


def test_options_the_model_lacks_are_not_suggested(acme: types.ModuleType) -> None:
    from llmcli.models import Options

    class PlainOptions(Options):  # no timeout, no max_retries
        max_tokens: int = 100

    class Bare(acme.AcmeModel):  # type: ignore[name-defined,misc]
        Options = PlainOptions

    Client.script = [StatusError(429, "slow down"), TimeoutException()]
    for expected in ("Acme rate limit (429) after 2 retries: slow down. Wait, and try again.",
                     "Acme did not answer within 300s after 2 retries; try again later"):
        with pytest.raises(ProviderError) as info:
            Bare("bare").prompt("Go on", log=False).text()
        assert str(info.value) == expected
        assert "-o" not in str(info.value)


def test_the_kit_imports_no_sdk_or_http_library() -> None:
    import subprocess

    code = ("import sys, llmcli.remote\n"
            "heavy = [m for m in ('httpx', 'anthropic', 'openai', 'mistralai') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_redaction_marker_is_the_cores() -> None:
    assert config.REDACTED == "[REDACTED]"


def test_a_request_waits_300_seconds_unless_told_otherwise(acme: types.ModuleType) -> None:
    llmcli.get_model("acme-1").prompt("Go on", log=False).text()
    assert Client.made[-1]["timeout"] == 300.0  # not the SDK's own 600 s
    llmcli.get_model("acme-1").prompt("Go on", log=False, timeout=7).text()
    assert Client.made[-1]["timeout"] == 7.0


@pytest.mark.parametrize(("plugin", "model"), [("llmcli-openai", "gpt-4o"),
                                               ("llmcli-anthropic", "claude-sonnet-4-5")])
def test_the_sdk_clients_get_the_timeout_and_a_short_connect(
        load_plugins: Any, plugin: str, model: str) -> None:
    from llmcli import api
    from llmcli.remote import Call

    load_plugins(plugin)
    found: Any = llmcli.get_model(model)
    for given, expected in ((None, (5.0, 300.0)), (30.0, (5.0, 30.0)), (2.0, (2.0, 2.0))):
        options = {} if given is None else {"timeout": given}
        request = api.prompt(found, "x", key="sk-test-0000", log=False, options=options).request
        call = Call(request=request, sdk=found.import_sdk(), base_url="http://127.0.0.1:9",
                    timeout=given or 300.0)
        client = found.connect(call)
        try:
            assert (client.timeout.connect, client.timeout.read) == expected
        finally:
            found.close(client)

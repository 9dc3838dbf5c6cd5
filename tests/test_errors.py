"""The exception tree and the shared HTTP-status wording used by every provider plugin."""

from __future__ import annotations

import pytest

from llmcli import errors


def test_every_error_is_an_llmcli_error() -> None:
    for name in ("UnknownModelError", "KeyNeededError", "PrefillUnsupportedError",
                 "OptionsError", "ConversationError", "LogError", "ConfigError",
                 "ProviderError", "PartialResponseError"):
        assert issubclass(getattr(errors, name), errors.LLMCLIError)
    assert issubclass(errors.PartialResponseError, errors.ProviderError)


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
    error = errors.http_status_error(
        "Acme", status, detail, key_hint="Run 'llmcli keys set acme'.",
        retried=" after 2 retries", kind="invalid_request_error",
        not_found_hint="Check the model name")
    assert str(error) == " ".join(expected.split())  # always one line
    assert error.status == status and error.provider == "acme"


def test_str_list_option_type() -> None:
    from llmcli.models import Options, StrList

    class StopOptions(Options):
        stop: StrList | None = None

    assert StopOptions(stop="###").stop == ["###"]
    assert StopOptions(stop='["a", "b"]').stop == ["a", "b"]
    assert StopOptions(stop=["x"]).stop == ["x"]
    assert StopOptions(stop="[not json").stop == ["[not json"]


@pytest.mark.parametrize(("kind", "kwargs", "expected"), [
    ("timeout", {"limit": 30, "retried": " after 2 retries"},
     "Acme did not answer within 30s after 2 retries; raise -o timeout"),
    ("timeout", {}, "Acme did not answer within the time limit; raise -o timeout"),
    ("connect", {"url": "http://127.0.0.1:9/v1", "detail": "Connection refused"},
     "Could not connect to Acme at http://127.0.0.1:9/v1: Connection refused"),
    ("stream", {"detail": "RemoteProtocolError: peer closed\nconnection"},
     "Acme stream broke off: RemoteProtocolError: peer closed connection"),
    ("stalled", {}, "Acme stream stalled past the time limit; raise -o timeout"),
    ("other", {"detail": "ValueError: odd"}, "Acme request failed: ValueError: odd"),
])
def test_transport_error_wording(kind: str, kwargs: dict, expected: str) -> None:
    from llmcli.errors import transport_error

    error = transport_error("Acme", kind, **kwargs)
    assert str(error) == expected and error.provider == "acme" and error.status is None


def test_transport_error_does_not_repeat_a_url_the_provider_label_holds() -> None:
    from llmcli.errors import transport_error

    error = transport_error("qwen (http://localhost:11434/v1)", "connect",
                            url="http://localhost:11434/v1", detail="refused", provider_id="qwen")
    assert str(error) == "Could not connect to qwen (http://localhost:11434/v1): refused"

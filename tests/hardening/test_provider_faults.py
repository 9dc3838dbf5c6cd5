"""Provider faults, the same matrix for every bundled remote provider, through the real SDK:
each ends in success after a retry, or in one typed error (``llmcli.errors``) whose exact
wording is asserted here, and only here; from the CLI, one line on stderr and exit status 1;
in the log, complete / partial / error accordingly. Keys never appear.

The provider table and the fixtures are the provider harness, tests/providers/conftest.py;
what is particular to one wire format stays in that provider's own test module."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner

import llmcli
from llmcli import config
from llmcli.cli import cli
from llmcli.errors import (
    BrokenStreamError,
    KeyNeededError,
    OptionsError,
    PartialResponseError,
    ProviderConnectionError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from llmcli.remote import BaseURLOption, RemoteOptions
from tests.fakes.base import Reply
from tests.providers.conftest import (
    PROVIDERS,
    Provider,
    fast_retries_for_every_sdk,
    serving,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PARTIAL = " (the response broke off; what arrived is logged as partial)"


@pytest.fixture(params=sorted(PROVIDERS))
def backend(request: pytest.FixtureRequest, load_plugins: Callable[..., None],
            monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Provider, Any]]:
    """Each provider in turn: its fake serving, base URL and key in the environment."""
    fast_retries_for_every_sdk(monkeypatch)
    provider = PROVIDERS[request.param]
    with serving(provider, monkeypatch, load_plugins) as server:
        yield provider, server


def posts(server: Any) -> int:
    return len([r for r in server.requests if r.method == "POST"])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the block ends: nothing listens there


def run(provider: Provider, *extra: str, key: str | None = None) -> Any:
    args = ["-m", provider.model, "List two words.", "--prefill", "Words:",
            "--key", key or provider.key, *extra]
    return CliRunner().invoke(cli, args)


def last_log() -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["logs", "--json", "-n", "1"])
    return json.loads(result.stdout)[0]


def assert_one_line_error(result: Any, provider: Provider, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert err.startswith("Error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in result.output
    assert provider.key not in result.output
    for needle in needles:
        assert needle.lower() in err.lower(), err


# -- the exact wording, and the type a caller can catch -----------------------------------------

WRONG_KEY = "sk-wrong-" + "9" * 20

BAD_KEY = {
    # The Gemini API answers a bad key with 400 INVALID_ARGUMENT (not 401).
    "gemini": "Gemini rejected the request (400, INVALID_ARGUMENT): API key not valid. Please "
              "pass a valid API key. Run 'llmcli keys set gemini' or set GEMINI_API_KEY",
    "anthropic": "Anthropic rejected the API key (401): invalid x-api-key. Run 'llmcli keys "
                 "set anthropic' or set ANTHROPIC_API_KEY.",
    "mistral": "Mistral rejected the API key (401): Unauthorized. Run 'llmcli keys set "
               "mistral' or set MISTRAL_API_KEY.",
    "openai": "OpenAI rejected the API key (401): Incorrect API key provided: [REDACTED]. You "
              "can find your API key at https://platform.openai.com/account/api-keys. Run "
              "'llmcli keys set openai' or set OPENAI_API_KEY.",
}


def test_bad_key(backend: tuple[Provider, Any]) -> None:
    provider, server = backend
    response = provider.ask(key=WRONG_KEY)
    with pytest.raises(ProviderStatusError) as info:
        response.text()
    assert str(info.value) == BAD_KEY[provider.name]
    assert (info.value.status, info.value.provider) == (BAD_KEY_STATUS.get(provider.name, 401),
                                                        provider.error_id)
    assert WRONG_KEY[-12:] not in str(info.value)
    assert response.status == "error"
    assert posts(server) == 1  # a 401 is not retried


BAD_KEY_STATUS = {"gemini": 400}

#: What the fake's error says, per status.
SAID = {400: "max_tokens: must be positive", 403: "Not for this key",
        404: "The model `nope` does not exist", 429: "Number of requests exceeded",
        503: "Service unavailable", 529: "Overloaded"}

#: (status, max_retries) → the line each provider gives when the status persists. Mistral's
#: SDK retries within a time window, so it says "after retrying" rather than a count.
STATUS_WORDING: dict[tuple[int, int], dict[str, str]] = {
    (400, 0): {
        "gemini": "Gemini rejected the request (400, INVALID_ARGUMENT): max_tokens: must be "
                  "positive",
        "anthropic": "Anthropic rejected the request (400, invalid_request_error): max_tokens: "
                     "must be positive",
        "mistral": "Mistral rejected the request (400, code invalid_request_error): "
                   "max_tokens: must be positive",
        "openai": "OpenAI rejected the request (400): max_tokens: must be positive",
    },
    (403, 0): {
        "gemini": "Gemini refused the request (403): Not for this key. Check the key: Run "
                  "'llmcli keys set gemini' or set GEMINI_API_KEY.",
        "anthropic": "Anthropic refused the request (403): Not for this key. Check the key: "
                     "Run 'llmcli keys set anthropic' or set ANTHROPIC_API_KEY.",
        "mistral": "Mistral refused the request (403): Not for this key. Check the key: Run "
                   "'llmcli keys set mistral' or set MISTRAL_API_KEY.",
        "openai": "OpenAI refused the request (403): Not for this key. Check the key: Run "
                  "'llmcli keys set openai' or set OPENAI_API_KEY.",
    },
    (404, 0): {
        "gemini": "Gemini found nothing there (404): The model `nope` does not exist",
        "anthropic": "Anthropic found nothing there (404): The model `nope` does not exist",
        "mistral": "Mistral found nothing there (404): The model `nope` does not exist",
        "openai": "OpenAI found nothing there (404): The model `nope` does not exist. Check "
                  "the model name 'gpt-4o' and the base URL {base_url}",
    },
    (429, 1): {
        "gemini": "Gemini rate limit (429) after 1 retry: Number of requests exceeded. Wait, "
                  "or raise -o max_retries.",
        "anthropic": "Anthropic rate limit (429) after 1 retry: Number of requests exceeded. "
                     "Wait, or raise -o max_retries.",
        "mistral": "Mistral rate limit (429) after retrying: Number of requests exceeded. "
                   "Wait, or raise -o max_retries.",
        "openai": "OpenAI rate limit (429) after 1 retry: Number of requests exceeded. Wait, "
                  "or raise -o max_retries.",
    },
    (503, 0): {
        "gemini": "Gemini server error (503): Service unavailable",
        "anthropic": "Anthropic server error (503): Service unavailable",
        "mistral": "Mistral server error (503): Service unavailable",
        "openai": "OpenAI server error (503): Service unavailable",
    },
    (503, 2): {
        "gemini": "Gemini server error (503) after 2 retries: Service unavailable",
        "anthropic": "Anthropic server error (503) after 2 retries: Service unavailable",
        "mistral": "Mistral server error (503) after retrying: Service unavailable",
        "openai": "OpenAI server error (503) after 2 retries: Service unavailable",
    },
    (529, 0): {
        "gemini": "Gemini server error (529): Overloaded",
        "anthropic": "Anthropic is overloaded (529): Overloaded. Try again later.",
        "mistral": "Mistral server error (529): Overloaded",
        "openai": "OpenAI server error (529): Overloaded",
    },
}


@pytest.mark.parametrize(("status", "retries"), list(STATUS_WORDING))
def test_status_wording(backend: tuple[Provider, Any], status: int, retries: int) -> None:
    provider, server = backend
    by_time = provider.name == "mistral" and retries > 0
    # Mistral's SDK bounds retries by elapsed time rather than count: queue plenty.
    server.enqueue(*[provider.error(status, SAID[status], {})
                     for _ in range(200 if by_time else retries + 1)])
    response = provider.ask(max_retries=retries)
    with pytest.raises(ProviderStatusError) as info:
        response.text()
    base_url = provider.env(server.url)[provider.base_url_env]
    assert str(info.value) == STATUS_WORDING[status, retries][provider.name].format(
        base_url=base_url)
    assert (info.value.status, info.value.provider) == (status, provider.error_id)
    assert response.status == "error"
    assert posts(server) >= 2 if by_time else posts(server) == retries + 1


@pytest.mark.parametrize("retries", [0, 1])
def test_timeout_wording(backend: tuple[Provider, Any], retries: int) -> None:
    provider, server = backend
    server.delay = 1.0
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError) as info:
        provider.ask(timeout=0.2, max_retries=retries).text()
    after = {0: "", 1: " after retrying" if provider.name == "mistral" else " after 1 retry"}
    assert str(info.value) == (
        f"{provider.display} did not answer within 0.2s{after[retries]}; raise -o timeout")
    assert info.value.status is None and info.value.provider == provider.error_id
    if not retries:
        assert time.monotonic() - started < 0.9


def test_connection_refused_wording(backend: tuple[Provider, Any],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    provider, _ = backend
    base_url = provider.env(f"http://127.0.0.1:{closed_port()}")[provider.base_url_env]
    monkeypatch.setenv(provider.base_url_env, base_url)
    with pytest.raises(ProviderConnectionError) as info:
        provider.ask(max_retries=0).text()
    assert str(info.value).startswith(f"Could not connect to {provider.display} at {base_url}: ")
    assert info.value.status is None and info.value.provider == provider.error_id


def test_broken_stream_wording(backend: tuple[Provider, Any]) -> None:
    provider, server = backend
    server.cut_after = 5
    response = provider.ask(log=True)
    with pytest.raises(PartialResponseError) as info:
        response.text()
    message = str(info.value)
    assert message.startswith(f"{provider.display} stream broke off: ") and message.endswith(
        PARTIAL), message
    assert isinstance(info.value.__cause__, BrokenStreamError)
    assert info.value.provider == provider.error_id
    assert response.status == "partial"
    assert response.text_so_far().startswith(provider.prefill)
    assert posts(server) == 1  # a stream that had started is not retried
    row = last_log()
    assert (row["status"], row["text"]) == ("partial", response.text_so_far())


ENDED_EARLY = {
    "gemini": "Gemini: the stream ended before the model finished (no finishReason)",
    "anthropic": "Anthropic: the stream ended before the model finished (no message_stop)",
    "mistral": "Mistral: the stream ended before the model finished (no finish_reason)",
    "openai": "OpenAI: the stream ended before the model finished (no finish_reason)",
}


def test_stream_that_ends_before_the_model_finished(backend: tuple[Provider, Any]) -> None:
    """A stream closed cleanly without the provider's end marker (a proxy, say) was cut
    short: an error, not a complete reply."""
    provider, server = backend
    server.unfinished = True
    response = provider.ask()
    with pytest.raises(PartialResponseError) as info:
        response.text()
    assert str(info.value) == ENDED_EARLY[provider.name] + PARTIAL
    assert isinstance(info.value.__cause__, BrokenStreamError)
    assert response.text_so_far().startswith(provider.prefill)


def test_a_key_in_the_provider_message_is_redacted(backend: tuple[Provider, Any]) -> None:
    from llmcli.log import LogStore

    provider, server = backend
    server.enqueue(provider.error(400, f"bad request for key {provider.key}", {}))
    response = provider.ask(log=True)
    with pytest.raises(ProviderStatusError) as info:
        response.text()
    assert provider.key not in str(info.value) and config.REDACTED in str(info.value)
    row = LogStore().recent(1)[0]
    assert row["status"] == "error"
    assert provider.key not in row["error"] and "400" in row["error"]


def test_retry_after_is_respected(backend: tuple[Provider, Any]) -> None:
    provider, server = backend
    if provider.name == "gemini":
        pytest.skip("google-genai's retries (tenacity) back off on their own and do not read "
                    "Retry-After")
    server.enqueue(provider.error(429, "slow down", {"retry-after": "0.4"}))
    started = time.monotonic()
    assert provider.ask().text().startswith(provider.prefill)
    assert time.monotonic() - started >= 0.35
    assert posts(server) == 2


# -- refused before any request ---------------------------------------------------------------


def test_missing_key_fails_before_any_request(backend: tuple[Provider, Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    provider, server = backend
    monkeypatch.delenv(provider.key_env)
    with pytest.raises(KeyNeededError, match=provider.key_env):
        provider.ask()
    assert posts(server) == 0


def test_unknown_option_fails_loudly(backend: tuple[Provider, Any]) -> None:
    provider, server = backend
    with pytest.raises(OptionsError, match="temprature"):
        provider.ask(temprature=1)
    assert posts(server) == 0


def test_the_shared_options_are_the_kits(backend: tuple[Provider, Any]) -> None:
    provider, _ = backend
    for model in llmcli.get_models():
        assert issubclass(model.Options, RemoteOptions), model.model_id
        assert issubclass(model.Options, BaseURLOption) is provider.base_url_option
        assert model.Options().max_retries == 2 and model.Options().timeout is None


def test_base_url_option(backend: tuple[Provider, Any],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    provider, server = backend
    base_url = provider.env(server.url)[provider.base_url_env]
    monkeypatch.delenv(provider.base_url_env)
    if not provider.base_url_option:  # OpenAI's models read OPENAI_BASE_URL only
        with pytest.raises(OptionsError, match="base_url"):
            provider.ask(base_url=base_url)
        return
    provider.script(server, "via option")
    assert provider.ask(prefill=None, base_url=base_url).text() == "via option"


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_loading_imports_no_sdk(name: str) -> None:
    provider = PROVIDERS[name]
    module = provider.plugin.replace("-", "_")
    code = (
        f"import sys, {module}\n"
        "models = []\n"
        f"{module}.register_models(models.append)\n"
        f"assert models and {module}.resolve_model({provider.any_id!r}) is not None\n"
        f"assert not [m for m in sys.modules if m.split('.')[0] == {provider.sdk!r}], 'SDK'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_lists_every_provider_without_importing_an_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh interpreter: in this one the SDKs are already imported by other tests.
    monkeypatch.setenv("LLMCLI_LOAD_PLUGINS", ",".join(p.plugin for p in PROVIDERS.values()))
    sdks = tuple(p.sdk for p in PROVIDERS.values())
    code = (
        "import sys\n"
        "from llmcli.cli import cli\n"
        "try:\n"
        "    cli(['models'])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        f"sdks = [m for m in sys.modules if m.split('.')[0] in {sdks!r}]\n"
        "assert not sdks, sdks\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "eats" in lines["claude-sonnet-4-5"]
    assert "emulated" in lines["claude-opus-4-7"]
    assert "echoes" in lines["mistral-small-latest"]
    assert "emulated" in lines["gpt-4o"]


# -- the command line: one line, exit 1, the log ------------------------------------------------


def test_success_baseline(backend: tuple[Provider, Any]) -> None:
    provider, _ = backend
    result = run(provider)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Words:")
    assert last_log()["status"] == "complete"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_say_how_to_set_the_key(backend: tuple[Provider, Any], status: int) -> None:
    provider, server = backend
    server.enqueue(provider.error(status, "credentials rejected by fake", {}))
    result = run(provider, "-o", "max_retries", "0")
    assert_one_line_error(result, provider, str(status))
    assert f"llmcli keys set {provider.name}" in result.stderr
    assert last_log()["status"] == "error"


def test_wrong_key_is_never_shown(backend: tuple[Provider, Any]) -> None:
    provider, _ = backend
    result = run(provider, "-o", "max_retries", "0", key=WRONG_KEY)
    assert_one_line_error(result, provider, str(BAD_KEY_STATUS.get(provider.name, 401)))
    assert result.stderr.strip() == "Error: " + BAD_KEY[provider.name]
    assert WRONG_KEY not in result.output and WRONG_KEY[-12:] not in result.output


@pytest.mark.parametrize(("status", "message"), [
    (400, "max_tokens: must be positive (fake says)"),
    (404, "The model `nope` does not exist (fake says)"),
])
def test_client_errors_show_the_provider_message(backend: tuple[Provider, Any], status: int,
                                                 message: str) -> None:
    provider, server = backend
    server.enqueue(provider.error(status, message, {}))
    result = run(provider, "-o", "max_retries", "0")
    assert_one_line_error(result, provider, str(status), "(fake says)")
    assert last_log()["status"] == "error"


@pytest.mark.parametrize(("status", "headers"), [
    (429, {"retry-after": "0"}), (429, {}), (500, {}), (502, {}), (503, {}), (504, {}),
    (529, {}),
])
def test_transient_errors_are_retried(backend: tuple[Provider, Any], status: int,
                                      headers: dict[str, str]) -> None:
    provider, server = backend
    if status == 529 and provider.name in ("mistral", "gemini"):
        pytest.skip("529 is Anthropic's 'overloaded'; Mistral's and Gemini's SDKs retry "
                    "429/500/502/503/504")
    server.enqueue(provider.error(status, "try again (fake)", headers))
    result = run(provider, "-o", "max_retries", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Words:")
    assert last_log()["status"] == "complete"
    assert posts(server) == 2


def test_persistent_overload_gives_up_with_the_status(backend: tuple[Provider, Any]) -> None:
    provider, server = backend
    # Mistral's SDK bounds retries by elapsed time rather than count: queue plenty.
    server.enqueue(*[provider.error(503, "still overloaded (fake)", {}) for _ in range(200)])
    result = run(provider, "-o", "max_retries", "1")
    assert_one_line_error(result, provider, "503")
    assert last_log()["status"] == "error"


def test_connection_refused(backend: tuple[Provider, Any],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    provider, _ = backend
    for key, value in provider.env(f"http://127.0.0.1:{closed_port()}").items():
        monkeypatch.setenv(key, value)
    result = run(provider, "-o", "max_retries", "0")
    assert_one_line_error(result, provider)
    assert "connect" in result.stderr.lower()
    assert last_log()["status"] == "error"


def test_timeout(backend: tuple[Provider, Any]) -> None:
    provider, server = backend
    server.delay = 2.0
    result = run(provider, "-o", "max_retries", "0", "-o", "timeout", "0.3")
    assert_one_line_error(result, provider)
    assert "time" in result.stderr.lower()
    assert last_log()["status"] == "error"


def test_stream_cut_mid_way_is_partial(backend: tuple[Provider, Any]) -> None:
    provider, server = backend
    server.cut_after = 5
    result = run(provider, "-o", "max_retries", "0")
    assert_one_line_error(result, provider, "broke off")
    row = last_log()
    assert row["status"] == "partial"
    assert row["text"].startswith("Words:")
    assert result.stdout.startswith("Words:")


def test_invalid_json_body(backend: tuple[Provider, Any]) -> None:
    provider, server = backend
    server.enqueue(Reply(status=200, raw_body=b'{"id": "x", "choices": [', headers={}))
    result = run(provider, "--no-stream", "-o", "max_retries", "0")
    assert_one_line_error(result, provider)
    assert last_log()["status"] == "error"


def test_malformed_sse_line(backend: tuple[Provider, Any]) -> None:
    provider, server = backend
    server.enqueue(Reply(events=["data: {this is not json\n\n"], status=200))
    result = run(provider, "-o", "max_retries", "0")
    if result.exit_code == 0:  # an SDK may skip an unparseable event it does not know
        assert result.stdout.startswith("Words:")
    else:
        assert_one_line_error(result, provider)
        assert last_log()["status"] in ("error", "partial")

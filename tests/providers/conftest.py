"""The provider test harness: one table of the bundled remote providers, and the fixtures
every provider test uses.

* ``PROVIDERS``: per provider, its plugin, default model, the key its fake accepts, where the
  base URL goes, and how to script its fake; ``provider.ask(...)`` prompts its model.
* ``fake``: the provider's fake server, started; ``served``: the same with its base URL and
  key in the environment and the plugin loaded (what most tests want).
* fast retries for every SDK (autouse).

A provider's test module names its provider (``PROVIDER = "anthropic"``) and keeps only what
is particular to that wire format. What every provider shares, the exact error wording
included, is asserted once, in the fault matrix (tests/hardening/test_provider_faults.py),
which runs over this table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import llmcli
from tests.fakes import anthropic as fa
from tests.fakes import gemini as fg
from tests.fakes import mistral as fm
from tests.fakes import openai as fo
from tests.fakes.base import Reply

#: What the OpenAI fake's model writes after the prefill.
OPENAI_CONTINUATION = " and the rest of the reply."
_DEFAULT: Any = object()


@dataclass(frozen=True)
class Provider:
    #: The key in PROVIDERS.
    name: str
    #: The distribution to load, and the SDK it must import only when a model runs.
    plugin: str
    sdk: str
    #: The provider as messages name it, and ``ProviderError.provider``.
    display: str
    error_id: str
    #: The model ``ask`` prompts, and a name only ``resolve_model`` knows.
    model: str
    any_id: str
    #: The key the fake accepts, and the variable it is read from.
    key: str
    key_env: str
    #: The variable that moves the endpoint, and what follows the fake's URL in it.
    base_url_env: str
    url_suffix: str
    #: What ``ask`` sends by default.
    prompt: str
    prefill: str
    #: A fake for a key, unstarted.
    make: Callable[[str], Any]
    #: An HTTP error reply in the provider's shape: (status, message, headers).
    error: Callable[[int, str, dict[str, str]], Reply]
    #: The name of the fake's attribute for what the model writes after the prefill.
    reply_attribute: str
    #: Whether the models take ``-o base_url`` (OpenAI's read OPENAI_BASE_URL).
    base_url_option: bool = True

    def env(self, url: str) -> dict[str, str]:
        return {self.base_url_env: url + self.url_suffix}

    def script(self, fake: Any, text: str) -> None:
        """Make the fake's model write ``text`` after the prefill (whatever the wire does
        with the prefill, the user gets ``prefill + text``)."""
        setattr(fake, self.reply_attribute, text)

    def ask(self, model: str | None = None, prefill: str | None = _DEFAULT,
            stream: bool = True, **kwargs: Any) -> llmcli.Response:
        """Prompt ``model`` (default: the table's) with the table's prompt and prefill; not
        logged unless ``log=True``."""
        kwargs.setdefault("log", False)
        return llmcli.get_model(model or self.model).prompt(
            self.prompt, prefill=self.prefill if prefill is _DEFAULT else prefill,
            stream=stream, **kwargs)


def _anthropic_error(status: int, message: str, headers: dict[str, str]) -> Reply:
    error_type = {401: "authentication_error", 403: "permission_error",
                  404: "not_found_error", 429: "rate_limit_error",
                  529: "overloaded_error"}.get(status)
    if error_type is None:
        error_type = "api_error" if status >= 500 else "invalid_request_error"
    return fa.error(status, error_type, message, headers)


PROVIDERS: dict[str, Provider] = {
    "anthropic": Provider(
        name="anthropic", plugin="llmcli-anthropic", sdk="anthropic", display="Anthropic",
        error_id="anthropic", model="claude-sonnet-4-5",
        any_id="anthropic/claude-3-5-haiku-20241022",
        key="sk-ant-test-0123456789abcdef", key_env="ANTHROPIC_API_KEY",
        base_url_env="ANTHROPIC_BASE_URL", url_suffix="",
        prompt="List two letters as JSON.", prefill='["',
        make=lambda key: fa.FakeAnthropic(api_key=key), error=_anthropic_error,
        reply_attribute="reply",
    ),
    "mistral": Provider(
        name="mistral", plugin="llmcli-mistral", sdk="mistralai", display="Mistral",
        error_id="mistral", model="mistral-small-latest",
        any_id="mistral/magistral-medium-latest",
        key="mistral-test-0123456789abcdef", key_env="MISTRAL_API_KEY",
        base_url_env="MISTRAL_BASE_URL", url_suffix="",
        prompt="List two letters as JSON.", prefill='["',
        make=lambda key: fm.FakeMistral(api_key=key),
        error=lambda status, message, headers: fm.error(status, message, headers=headers),
        reply_attribute="reply",
    ),
    "openai": Provider(
        name="openai", plugin="llmcli-openai", sdk="openai", display="OpenAI",
        error_id="OpenAI", model="gpt-4o", any_id="openai/gpt-4o-2024-08-06",
        key="sk-test-abcdefghijklmnop1234", key_env="OPENAI_API_KEY",
        base_url_env="OPENAI_BASE_URL", url_suffix="/v1",
        prompt="Say hello", prefill="Hello",
        make=lambda key: fo.FakeOpenAI(api_key=key, continuation=OPENAI_CONTINUATION),
        error=lambda status, message, headers: fo.error_reply(status, message,
                                                              headers=headers),
        reply_attribute="continuation", base_url_option=False,
    ),
    "gemini": Provider(
        name="gemini", plugin="llmcli-gemini", sdk="google", display="Gemini",
        error_id="gemini", model="gemini-3.5-flash", any_id="gemini/gemini-2.5-flash",
        key="AIzaFakeGeminiKey0123456789", key_env="GEMINI_API_KEY",
        base_url_env="GOOGLE_GEMINI_BASE_URL", url_suffix="",
        prompt="List two letters as JSON.", prefill='["',
        make=lambda key: fg.FakeGemini(api_key=key),
        error=lambda status, message, headers: fg.error(status, message, headers),
        reply_attribute="reply",
    ),
}


def fast_retries_for_every_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Retry-After the SDKs back off from 0.5 s; milliseconds keep the suite quick."""
    import anthropic._base_client
    import openai._base_client
    from llmcli_gemini import _models as gemini_models
    from llmcli_mistral import _models as mistral_models

    monkeypatch.setattr(anthropic._base_client, "INITIAL_RETRY_DELAY", 0.01)
    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.01)
    monkeypatch.setattr(mistral_models, "RETRY_TUNING",
                        {"initial_ms": 5, "max_ms": 20, "jitter_ms": 0, "slack_ms": 500})
    monkeypatch.setattr(gemini_models, "RETRY_TUNING",
                        {"initial_delay": 0.01, "max_delay": 0.02, "jitter": 0.0})


@contextlib.contextmanager
def serving(provider: Provider, monkeypatch: pytest.MonkeyPatch,
            load_plugins: Callable[..., None]) -> Iterator[Any]:
    """The provider's fake, with its base URL and key in the environment and the plugin
    loaded."""
    with provider.make(provider.key) as fake:
        for name, value in provider.env(fake.url).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv(provider.key_env, provider.key)
        load_plugins(provider.plugin)
        yield fake


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_retries_for_every_sdk(monkeypatch)


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> Provider:
    """The provider the test module names in ``PROVIDER``."""
    name = getattr(request.module, "PROVIDER", None)
    if name not in PROVIDERS:
        pytest.fail(f"{request.module.__name__} names no PROVIDER (one of {sorted(PROVIDERS)})")
    return PROVIDERS[name]


@pytest.fixture
def fake(provider: Provider) -> Iterator[Any]:
    """The provider's fake server, started (nothing in the environment)."""
    with provider.make(provider.key) as server:
        yield server


@pytest.fixture
def served(provider: Provider, monkeypatch: pytest.MonkeyPatch,
           load_plugins: Callable[..., None]) -> Iterator[Any]:
    """The provider's fake with its base URL and key in the environment, the plugin loaded."""
    with serving(provider, monkeypatch, load_plugins) as server:
        yield server

"""The exception tree. (Provider failures are worded by llmcli.remote: tests/test_remote.py.)"""

from __future__ import annotations

from llmcli import errors


def test_every_error_is_an_llmcli_error() -> None:
    for name in ("UnknownModelError", "KeyNeededError", "PrefillUnsupportedError",
                 "OptionsError", "ConversationError", "LogError", "ConfigError",
                 "ProviderError", "PartialResponseError"):
        assert issubclass(getattr(errors, name), errors.LLMCLIError)
    for name in ("ProviderStatusError", "ProviderTimeoutError", "ProviderConnectionError",
                 "BrokenStreamError", "PartialResponseError"):
        assert issubclass(getattr(errors, name), errors.ProviderError)


def test_str_list_option_type() -> None:
    from llmcli.models import Options, StrList

    class StopOptions(Options):
        stop: StrList | None = None

    assert StopOptions(stop="###").stop == ["###"]
    assert StopOptions(stop='["a", "b"]').stop == ["a", "b"]
    assert StopOptions(stop=["x"]).stop == ["x"]
    assert StopOptions(stop="[not json").stop == ["[not json"]

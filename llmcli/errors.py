"""The exception tree. Every error a user can cause or meet has a class and a one-line message.

    LLMCLIError
     ├── UnknownModelError        no model by that name (message lists close matches)
     ├── KeyNeededError           the model needs an API key and none was found
     ├── PrefillUnsupportedError  a prefill was asked of a model that cannot honour it
     ├── OptionsError             an -o option the model does not know, or a bad value
     ├── ConversationError        no such conversation, or none to continue
     ├── LogError                 the log database cannot be opened or written
     ├── ConfigError              a user configuration file is malformed
     ├── PluginError              an installed plugin defines an unknown or malformed hook
     └── ProviderError            the backend failed (HTTP status, timeout, broken stream)
          └── PartialResponseError  the stream broke after some text arrived
"""

from __future__ import annotations


class LLMCLIError(Exception):
    """Base class; ``str(error)`` is a single line a user can act on."""


class UnknownModelError(LLMCLIError):
    def __init__(self, name: str, suggestions: list[str] | None = None) -> None:
        self.name = name
        self.suggestions = suggestions or []
        message = f"Unknown model: {name!r}"
        if self.suggestions:
            message += " (did you mean: " + ", ".join(self.suggestions) + "?)"
        message += ". Run 'llmcli models' to list them."
        super().__init__(message)


class KeyNeededError(LLMCLIError):
    def __init__(self, model_id: str, key_name: str, env_var: str | None) -> None:
        self.model_id = model_id
        self.key_name = key_name
        self.env_var = env_var
        how = f"'llmcli keys set {key_name}'"
        if env_var:
            how += f" or set {env_var}"
        super().__init__(f"Model {model_id!r} needs an API key: run {how}, or pass --key.")


class PrefillUnsupportedError(LLMCLIError):
    def __init__(self, model_id: str, reason: str = "", alternatives: list[str] | None = None):
        self.model_id = model_id
        self.alternatives = alternatives or []
        message = f"Model {model_id!r} does not support prefill"
        if reason:
            message += f" ({reason})"
        if self.alternatives:
            message += "; models that do: " + ", ".join(self.alternatives)
        super().__init__(message + ".")


class OptionsError(LLMCLIError):
    pass


class ConversationError(LLMCLIError):
    pass


class LogError(LLMCLIError):
    pass


class ConfigError(LLMCLIError):
    pass


class PluginError(LLMCLIError):
    """A plugin cannot be loaded as written: an unknown or misspelled hook, or a hook with
    the wrong signature. The message names the plugin, the module and the fix."""


class ProviderError(LLMCLIError):
    """A backend failed. ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None, provider: str = "") -> None:
        self.status = status
        self.provider = provider
        super().__init__(message)


class PartialResponseError(ProviderError):
    """The response broke off after some text had arrived; that text is logged as partial."""


def http_status_error(
    provider: str,
    status: int | None,
    detail: str,
    *,
    key_hint: str = "",
    retried: str = "",
    kind: str = "",
    not_found_hint: str = "",
    provider_id: str | None = None,
) -> ProviderError:
    """The one-line error for an HTTP status, worded the same for every provider.

    ``detail`` is the provider's own message (usually the most useful part); ``key_hint``
    says how to set the key (401/403); ``retried`` is e.g. " after 2 retries"; ``kind`` an
    error type or code for other 4xx. ``provider`` is the display name, ``provider_id`` the
    plugin's short name (default: ``provider`` lower-cased). Plugins scrub keys from
    ``detail`` before calling."""
    detail = detail.strip().rstrip(".") or "no details given"
    if status == 401:
        text = f"{provider} rejected the API key (401): {detail}. {key_hint}"
    elif status == 403:
        text = f"{provider} refused the request (403): {detail}. Check the key: {key_hint}"
    elif status == 404:
        text = f"{provider} found nothing there (404): {detail}"
        text += f". {not_found_hint}" if not_found_hint else ""
    elif status == 429:
        text = f"{provider} rate limit (429){retried}: {detail}. Wait, or raise -o max_retries."
    elif status == 529:
        text = f"{provider} is overloaded (529){retried}: {detail}. Try again later."
    elif status is not None and status >= 500:
        text = f"{provider} server error ({status}){retried}: {detail}"
    else:
        kind = f", {kind}" if kind else ""
        text = f"{provider} rejected the request ({status}{kind}): {detail}"
    return ProviderError(" ".join(text.split()), status=status,
                         provider=provider_id or provider.lower())


def transport_error(
    provider: str,
    kind: str,
    *,
    detail: str = "",
    limit: float | None = None,
    url: str = "",
    retried: str = "",
    provider_id: str | None = None,
) -> ProviderError:
    """The one-line error for a failure below HTTP, worded the same for every provider.

    ``kind`` is ``timeout`` (no answer within ``limit`` seconds), ``connect`` (``url`` could
    not be reached), ``stream`` (a started stream broke off), ``stalled`` (a started stream
    went silent past the timeout) or ``other``. ``detail`` is the underlying reason,
    ``retried`` e.g. " after 2 retries". Plugins scrub keys from ``detail`` before calling."""
    detail = " ".join(detail.split())
    reason = f": {detail}" if detail else ""
    if kind == "timeout":
        within = f"{limit:g}s" if limit else "the time limit"
        text = f"{provider} did not answer within {within}{retried}; raise -o timeout"
    elif kind == "connect":
        where = f" at {url}" if url and url not in provider else ""
        text = f"Could not connect to {provider}{where}{retried}{reason}"
    elif kind == "stream":
        text = f"{provider} stream broke off{reason}"
    elif kind == "stalled":
        text = f"{provider} stream stalled past the time limit{reason}; raise -o timeout"
    else:
        text = f"{provider} request failed{reason}"
    return ProviderError(" ".join(text.split()), provider=provider_id or provider.lower())

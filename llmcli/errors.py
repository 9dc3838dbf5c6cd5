"""The exception tree. Every error a user can cause or meet has a class and a one-line message.

    LLMCLIError
     ├── UnknownModelError        no model by that name (message lists close matches)
     ├── RefusedModelError        a name llmcli will not run (a preset nested in a preset)
     ├── KeyNeededError           the model needs an API key and none was found
     ├── PrefillUnsupportedError  a prefill was asked of a model that cannot honour it
     ├── OptionsError             an -o option the model does not know, or a bad value
     ├── ConversationError        no such conversation, or none to continue
     ├── LogError                 the log database cannot be opened or written
     ├── ConfigError              a user configuration file is malformed
     ├── PluginError              an installed plugin defines an unknown or malformed hook
     ├── PromptInputError         the prompt command's input or flags cannot be used (binary
     │                            stdin, an empty prompt, flags that exclude each other)
     ├── TemplateError            a template cannot be read, saved or applied
     ├── FragmentError            a fragment (-f) cannot be read
     ├── LogsInputError           bad arguments to ``llmcli logs``
     ├── BatchInputError          the batch input cannot be used (unreadable, not UTF-8, no
     │                            prompt column, duplicate ids, the output is the input)
     ├── InvalidSchemaError       a --schema that is malformed
     ├── SchemaUnsupportedError   a model that cannot honour a schema (or not with this prefill)
     ├── SchemaValidationError    a reply that is not JSON or does not conform to the schema
     ├── ProbeError               an OpenAI-compatible server that could not be probed
     ├── AttachmentError          an attachment (-a) cannot be read, fetched or recognised, or
     │                            is too large or of a type llmcli does not send
     ├── AttachmentUnsupportedError  a model that cannot take an attachment (of that type)
     ├── ToolsUnsupportedError    tools asked of a model that cannot call them
     ├── ToolError                a tool call that could not be answered
     │    ├── UnknownToolError          the model called a tool it was not given
     │    ├── ToolArgumentsError        the call's arguments are not JSON or do not fit
     │    ├── ToolExecutionError        the tool raised
     │    └── ToolResultError           the tool returned something that is not JSON
     ├── ChainLimitError          a tool chain still calling tools at its limit
     ├── ToolDefinitionError      a function or --functions code that cannot be a tool
     └── ProviderError            the backend failed
          ├── ProviderStatusError       the API answered with an HTTP error status
          ├── ProviderTimeoutError      no answer within the time limit
          ├── ProviderConnectionError   the server could not be reached
          ├── BrokenStreamError         a started stream broke off, stalled or ended early
          └── PartialResponseError      the reply broke off after some text arrived (the
                                        failure that ended it is its ``__cause__``)

The wording of provider failures lives with the code that knows the options it can suggest
(:mod:`llmcli.remote` for plugins built on it); this module names no option.
"""

from __future__ import annotations


class LLMCLIError(Exception):
    """Base class; ``str(error)`` is a single line a user can act on."""


def _naming(message: str, alternatives: list[str], verb: str) -> str:
    """A refusal's sentence, with the models that ``verb`` (can, do) where there are any."""
    if alternatives:
        message += f"; models that {verb}: " + ", ".join(alternatives)
    return message + "."


class UnknownModelError(LLMCLIError):
    def __init__(self, name: str, suggestions: list[str] | None = None) -> None:
        self.name = name
        self.suggestions = suggestions or []
        message = f"Unknown model: {name!r}"
        if self.suggestions:
            message += " (did you mean: " + ", ".join(self.suggestions) + "?)"
        message += ". Run 'llmcli models' to list them."
        super().__init__(message)


class RefusedModelError(LLMCLIError):
    """A model name that resolves but that llmcli will not run: a server preset nested in
    another (``vllm/ollama/x``), which would send the request on to a server that resolves
    the rest of the name again (a loop when it is ``llmcli serve`` itself)."""


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
        super().__init__(_naming(message, self.alternatives, "do"))


class OptionsError(LLMCLIError):
    pass


class ConversationError(LLMCLIError):
    pass


class LogError(LLMCLIError):
    pass


class LogWarning(UserWarning):
    """A reply that arrived but could not be logged (a full disk, a log that became
    unwritable): the reply is kept, ``Response.log_error`` says why, and this warning is
    issued instead of an error."""


class ConfigError(LLMCLIError):
    pass


class PluginError(LLMCLIError):
    """A plugin cannot be loaded as written: an unknown or misspelled hook, or a hook with
    the wrong signature. The message names the plugin, the module and the fix."""


class PromptInputError(LLMCLIError):
    """The prompt command cannot use its input or flags (``llmcli.cli.prompt``)."""


class TemplateError(LLMCLIError):
    """A template cannot be read, saved or applied (``llmcli.templates``)."""


class FragmentError(LLMCLIError):
    """A fragment cannot be read (``llmcli.fragments``)."""


class LogsInputError(LLMCLIError):
    """Bad arguments to ``llmcli logs`` (``llmcli.cli.logs``)."""


class BatchInputError(LLMCLIError):
    """The batch input cannot be used as a whole (a CSV without a prompt column, not UTF-8,
    duplicate ids, unreadable, the output file is the input)."""


class InvalidSchemaError(LLMCLIError):
    """The schema itself is malformed (not JSON, not a JSON Schema, a bad concise field)."""


class SchemaUnsupportedError(LLMCLIError):
    """The model cannot honour a schema (or not together with this prefill)."""


class SchemaValidationError(LLMCLIError):
    """A reply is not JSON, or does not conform to the schema."""


class ProbeError(LLMCLIError):
    """An OpenAI-compatible server could not be asked (unreachable, timed out, refused the
    key); raised by ``llmcli_openai``'s probe."""


class AttachmentError(LLMCLIError):
    """An attachment that cannot be used: a missing file, an unreachable URL, an unknown
    or refused type, more than the size limit, or (``-c``) one that was not stored and can
    no longer be read."""


class AttachmentUnsupportedError(LLMCLIError):
    """A model that cannot take an attachment, or not of that type; refused before any
    request (the message names models that can)."""


class ToolsUnsupportedError(LLMCLIError):
    """Tools were asked of a model that cannot call them (refused before any request)."""

    def __init__(self, model_id: str, alternatives: list[str] | None = None) -> None:
        self.model_id = model_id
        self.alternatives = alternatives or []
        super().__init__(_naming(f"Model {model_id!r} cannot call tools", self.alternatives,
                                 "can"))


class ToolError(LLMCLIError):
    """A tool call that could not be answered; ``result`` is what was recorded for it (a
    :class:`llmcli.record.ToolResult`, set where the call was answered)."""

    result: object = None


class UnknownToolError(ToolError):
    """The model called a tool by a name it was not given."""


class ToolArgumentsError(ToolError):
    """The call's arguments are not a JSON object, or do not match the tool's parameters."""


class ToolExecutionError(ToolError):
    """The tool's implementation raised."""


class ToolResultError(ToolError):
    """The tool returned a value that cannot be written as JSON."""


class ChainLimitError(LLMCLIError):
    """A tool chain reached its limit of responses while the model still called tools."""


class ToolDefinitionError(LLMCLIError):
    """A function (or ``--functions`` code) that cannot be made a tool, or a tool name
    that is not registered."""


class ProviderError(LLMCLIError):
    """A backend failed. ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None, provider: str = "") -> None:
        self.status = status
        self.provider = provider
        super().__init__(message)


class ProviderStatusError(ProviderError):
    """The provider answered with an HTTP error status (``status``); its message is kept."""


class ProviderTimeoutError(ProviderError):
    """The provider did not answer within the time limit (retries included)."""


class ProviderConnectionError(ProviderError):
    """The provider's server could not be reached."""


class BrokenStreamError(ProviderError):
    """A stream that had started broke off, went silent, or ended before the model
    finished. When some text had arrived the caller sees :class:`PartialResponseError`,
    whose ``__cause__`` is this error."""


class PartialResponseError(ProviderError):
    """The response broke off after some text had arrived; that text is logged as partial."""

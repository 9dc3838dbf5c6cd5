"""The library's front door: find models, prompt them, log the exchange.

    resolve the model → validate options → check the prefill capability → resolve the key
    → model.execute() → normalizer (in Response) → log
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from llmcli import config
from llmcli.capabilities import PrefillSupport
from llmcli.errors import (
    KeyNeededError,
    OptionsError,
    PrefillUnsupportedError,
    UnknownModelError,
)
from llmcli.models import Conversation, Model, Options, Request, Response
from llmcli.plugins import load_plugins

__all__ = ["get_models", "get_model", "get_default_model", "prompt", "validate_options",
           "resolve_key", "key_is_set", "Logger"]

Logger = Callable[[Response], None]

#: Preferred default when the user has not chosen one: the offline local model.
FALLBACK_DEFAULT = "smollm2"


def get_models() -> list[Model]:
    return [model for plugin in load_plugins() for model in plugin.models]


def _names(model: Model) -> list[str]:
    return [model.model_id, *model.aliases]


def get_model(name: str | None = None) -> Model:
    """The model with this id or alias (case-insensitive); the default model when None."""
    if name is None:
        return get_default_model()
    models = get_models()
    for model in models:
        if name in _names(model):
            return model
    lowered = name.lower()
    for model in models:
        if lowered in (n.lower() for n in _names(model)):
            return model
    for plugin in load_plugins():
        if plugin.resolver is not None:
            resolved = plugin.resolver(name)
            if resolved is not None:
                resolved.plugin = plugin.name
                return resolved
    all_names = [n for model in models for n in _names(model)]
    suggestions = difflib.get_close_matches(name, all_names, n=3, cutoff=0.5)
    if not suggestions:
        suggestions = [n for n in all_names if lowered in n.lower()][:3]
    raise UnknownModelError(name, suggestions)


def get_default_model() -> Model:
    chosen = config.default_model()
    if chosen:
        return get_model(chosen)
    models = get_models()
    for model in models:
        if FALLBACK_DEFAULT in _names(model):
            return model
    for model in models:
        if model.needs_key is None or key_is_set(model):
            return model
    if models:
        return models[0]
    raise UnknownModelError("(default)", [])


def key_is_set(model: Model) -> bool:
    if model.needs_key is None:
        return True
    return config.get_key(model.needs_key.name, model.needs_key.env_var) is not None


def resolve_key(model: Model, explicit: str | None = None) -> str | None:
    spec = model.needs_key
    if spec is None:
        return None
    key = config.get_key(spec.name, spec.env_var, explicit)
    if not key:
        raise KeyNeededError(model.model_id, spec.name, spec.env_var)
    config.remember_secret(key)
    return key


def validate_options(model: Model, options: dict[str, Any]) -> Options:
    try:
        return model.Options(**options)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "options"
        if error["type"] == "extra_forbidden":
            known = ", ".join(model.Options.model_fields) or "none"
            message = f"Unknown option {where!r} for {model.model_id} (known: {known})"
        else:
            message = f"Option {where!r} for {model.model_id}: {error['msg']}"
        raise OptionsError(message) from None


def _alternatives(exclude: Model) -> list[str]:
    names = []
    for model in get_models():
        if model is exclude:
            continue
        support = model.get_prefill_support(model.Options())
        if support is not PrefillSupport.UNSUPPORTED:
            names.append(model.model_id)
    return names[:5]


def _store_logger() -> Logger:
    from llmcli.log import log_response

    return log_response


def prompt(
    model: Model,
    prompt: str,
    *,
    system: str | None = None,
    prefill: str | None = None,
    stream: bool = True,
    key: str | None = None,
    log: bool | Logger = True,
    conversation: Conversation | None = None,
    options: dict[str, Any] | None = None,
) -> Response:
    """Prepare a response; nothing is sent until it is iterated or ``text()`` is called.

    Every check that can fail without the network fails here, before any request."""
    validated = validate_options(model, options or {})
    stream = stream and model.can_stream
    support = model.get_prefill_support(validated, stream=stream)
    prefill = prefill or ""
    if prefill and support is PrefillSupport.UNSUPPORTED:
        raise PrefillUnsupportedError(model.model_id, model.prefill_note(), _alternatives(model))
    resolved_key = resolve_key(model, key)
    if conversation is not None and conversation.model is not model:
        # A conversation continued with another model keeps its history.
        conversation.model = model
    request = Request(
        model_id=model.model_id,
        prompt=prompt,
        system=system,
        history=conversation.history() if conversation is not None else [],
        prefill=prefill,
        prefill_support=support,
        options=validated,
        stream=stream,
        key=resolved_key,
    )
    logger: Logger | None
    if callable(log):
        logger = log
    elif log and config.logging_enabled():
        logger = _store_logger()
    else:
        logger = None
    response = Response(model, request, conversation=conversation, logger=logger)
    if conversation is not None:
        conversation.responses.append(response)
    return response

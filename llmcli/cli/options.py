"""``-o KEY VALUE`` pairs into a model's options: shared by prompt, chat, batch, templates
and ``models options``, so that none of them imports another command's module for it."""

from __future__ import annotations

import json
import typing
from typing import TYPE_CHECKING, Any

from llmcli.errors import OptionsError

if TYPE_CHECKING:
    from llmcli.contract import Model

__all__ = ["parse_options"]


def _is_list_field(model: Model, name: str) -> bool:
    field = model.Options.model_fields.get(name)
    if field is None:
        return False
    annotation = field.annotation
    args = [annotation, *typing.get_args(annotation)]
    return any(typing.get_origin(a) is list or a is list for a in args)


def parse_options(model: Model, pairs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in pairs:
        if _is_list_field(model, key):
            if value.startswith("["):
                try:
                    items = json.loads(value)
                except ValueError:
                    raise OptionsError(f"Option {key!r}: {value!r} is not a JSON list") from None
            else:
                items = [value]
            options.setdefault(key, []).extend(items)
        elif key in options:
            raise OptionsError(f"Option {key!r} was given twice")
        else:
            options[key] = value
    return options

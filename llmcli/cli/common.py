"""What the commands share, in one module, so that none imports another command's module
for it: the click options ``llmcli prompt`` and ``llmcli chat`` both take (:func:`shared`),
``-o KEY VALUE`` parsing (:func:`parse_options`: prompt, chat, batch, ``models options``),
``-a``/``--at`` references as attachments (:func:`attachments_from`), standard input,
code-block extraction (``-x``, ``logs -x``) and the not-logged warning."""

from __future__ import annotations

import json
import re
import sys
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from llmcli.errors import OptionsError, PromptInputError

if TYPE_CHECKING:
    from llmcli.attachments import Attachment
    from llmcli.contract import Model

__all__ = ["SHARED_OPTIONS", "attachment_from", "attachments_from", "extract_code_block",
           "parse_options", "read_stdin", "shared", "warn_if_not_logged"]

F = TypeVar("F", bound=Callable[..., Any])

#: The options ``llmcli prompt`` and ``llmcli chat`` share: flags, destination and default
#: help, written once (a command may word the help for itself).
SHARED_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "model": (("-m", "--model", "model_name"),
              {"help": "Model id or alias (see 'llmcli models')."}),
    "system": (("-s", "--system"), {"help": "System prompt."}),
    "prefill": (("--prefill",),
                {"help": "The first characters of the reply; it always starts with them."}),
    "option": (("-o", "--option", "options"),
               {"type": (str, str), "multiple": True, "metavar": "KEY VALUE",
                "help": "A model option, validated by the model (repeat for several)."}),
    "continue": (("-c", "--continue", "continue_"),
                 {"is_flag": True, "help": "Continue the most recent conversation."}),
    "cid": (("--cid", "--conversation", "conversation_id"),
            {"help": "Continue this conversation."}),
    "no_log": (("-n", "--no-log"), {"is_flag": True, "help": "Do not log this exchange."}),
    "key": (("--key",), {"help": "API key to use, or the name of a stored key."}),
    "template": (("-t", "--template", "template_name"),
                 {"metavar": "NAME", "help": "Use the saved template NAME (see 'llmcli "
                  "templates')."}),
    "param": (("-p", "--param", "params"),
              {"type": (str, str), "multiple": True, "metavar": "KEY VALUE",
               "help": "Fill the template's $KEY with VALUE (repeat for several)."}),
    "fragment": (("-f", "--fragment", "fragments"),
                 {"multiple": True, "metavar": "PATH_OR_URL",
                  "help": "Add a file's or a URL's contents to the prompt (repeatable)."}),
    "system_fragment": (("--sf", "--system-fragment", "system_fragments"),
                        {"multiple": True, "metavar": "PATH_OR_URL",
                         "help": "Add a file's or a URL's contents to the system prompt "
                         "(repeatable)."}),
    "attachment": (("-a", "--attachment", "attachments"),
                   {"multiple": True, "metavar": "PATH_OR_URL",
                    "help": "Send an image or a PDF with the prompt (repeatable; '-' reads "
                    "standard input); its type is recognised from its content."}),
    "attachment_type": (("--at", "--attachment-type", "typed_attachments"),
                        {"type": (str, str), "multiple": True, "metavar": "PATH TYPE",
                         "help": "An attachment of the given media type, e.g. --at scan.bin "
                         "image/png."}),
    "store_attachments": (("--store-attachments",),
                          {"is_flag": True,
                           "help": "Store the attachments' content in the log (else only "
                           "type, size, sha256 and path or URL)."}),
}


def shared(name: str, help: str | None = None) -> Callable[[F], F]:
    """The shared option ``name`` as a click decorator, with ``help`` in place of its
    default wording when given."""
    flags, settings = SHARED_OPTIONS[name]
    decorator: Callable[[F], F] = click.option(
        *flags, **{**settings, **({"help": help} if help is not None else {})})
    return decorator


def read_stdin() -> str:
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        return ""
    try:
        if stream.isatty():
            return ""
        data = stream.read()
    except (OSError, ValueError):
        return ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PromptInputError(
            "Standard input is not UTF-8 text; pipe text, not binary data") from None


def attachment_from(reference: str, media_type: str | None = None,
                    base: str | None = None) -> Attachment:
    """One ``-a`` reference as an :class:`~llmcli.attachments.Attachment`: a URL as given,
    a path made absolute (relative to ``base``, else the current directory), so that ``-c``
    from another directory reads the same file. Nothing is read yet."""
    import os

    from llmcli.attachments import Attachment, is_url

    if is_url(reference):
        return Attachment(url=reference, type=media_type)
    path = os.path.expanduser(reference)
    if base is not None:
        path = os.path.join(base, path)
    return Attachment(path=os.path.abspath(path), type=media_type)


def attachments_from(references: tuple[str, ...], typed: tuple[tuple[str, str], ...],
                     stdin: bool = True) -> tuple[Attachment, ...]:
    """``-a`` and ``--at`` as attachments, in the order given by kind (``-`` standard
    input's bytes, read now, where ``stdin`` allows it). Nothing else is read yet: the
    model is asked first."""
    from llmcli.attachments import Attachment

    def one(reference: str, media_type: str | None) -> Attachment:
        if reference == "-":
            if not stdin:
                raise PromptInputError("-a - is not available here: standard input is "
                                       "where the messages come from")
            return Attachment(content=_read_stdin_bytes(), type=media_type)
        return attachment_from(reference, media_type)

    if sum(1 for r in (*references, *(p for p, _ in typed)) if r == "-") > 1:
        raise PromptInputError("Standard input can be one attachment only ('-a -' once)")
    return (*(one(r, None) for r in references), *(one(p, t.lower()) for p, t in typed))


def _read_stdin_bytes() -> bytes:
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None or stream.isatty():
        raise PromptInputError("-a - reads an attachment from standard input; pipe a file in")
    return bytes(stream.read())


def extract_code_block(text: str) -> str | None:
    """The contents of the first fenced code block; a fence left open (the reply was cut
    short) runs to the end."""
    match = _FENCE.search(text)
    if match is None:
        return None
    body = match.group("body")
    fence = match.group("fence")
    closing = re.search(rf"^[ \t]*{re.escape(fence)}{re.escape(fence[0])}*[ \t]*$", body,
                        re.MULTILINE)
    if closing:
        body = body[: closing.start()]
    return body.rstrip("\n") + "\n" if body.strip() else ""


_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[^\n`]*\n(?P<body>.*)", re.MULTILINE | re.DOTALL)


def warn_if_not_logged(response: Any) -> None:
    """One line on stderr when a reply could not be logged (a full disk): the reply itself
    was printed, and the command does not fail for it."""
    if response.log_error:
        click.echo(f"Warning: this reply was not logged: {response.log_error}", err=True)


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

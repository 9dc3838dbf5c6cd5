"""``llmcli chat`` — an interactive conversation, with a prefill per turn.

Every turn goes through :func:`llmcli.api.prompt` with one :class:`~llmcli.Conversation`, so
each is logged in that conversation exactly as ``llmcli -c`` would log it. Lines starting with
``!`` are chat commands (see :data:`HELP`); nothing else is interpreted.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import click

from llmcli.cli.common import (
    attachment_from,
    attachments_from,
    parse_options,
    shared,
    warn_if_not_logged,
)
from llmcli.cli.render import ReasoningView, ReplyView
from llmcli.cli.tools_cmd import NO_TOOLS, ToolFlags, tool_options
from llmcli.errors import LLMCLIError, OptionsError

if TYPE_CHECKING:
    from llmcli.attachments import Attachment
    from llmcli.contract import Model
    from llmcli.response import Conversation
    from llmcli.spec import PromptSpec

HELP = """\
Type 'exit' or 'quit' (or press Ctrl-D) to leave; Ctrl-C stops a reply.
  !prefill TEXT   the next reply starts with TEXT (!prefill alone clears it)
  !attach PATH    send an image or a PDF (a path or a URL) with the next message
  !multi … !end   send several lines as one message
  !edit           write the next message in $EDITOR
  !model NAME     continue the conversation with another model
  !reasoning      show or hide the model's reasoning (!reasoning on|off)
  !continue       continue the last reply where it was cut off (max_tokens, Ctrl-C)
  !help           this list"""

EXIT_WORDS = ("exit", "quit")


@dataclass
class ChatState:
    """What the next turn will use; the chat commands change it."""

    conversation: Conversation
    system: str | None
    #: ``--prefill``: every turn starts with it unless a ``!prefill`` overrides one turn.
    prefill: str | None
    #: ``!prefill TEXT``: the next turn only.
    next_prefill: str | None = None
    option_pairs: tuple[tuple[str, str], ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    log: bool = True
    #: ``-f`` fragments' text: sent once, before the first message.
    context: str | None = None
    #: ``-t``'s prompt around each message (its ``$input``), as for one prompt.
    wrap: Callable[[str], str] | None = None
    #: ``-t``'s schema, for every reply.
    schema: dict[str, Any] | None = None
    #: Show the reasoning (None: on a terminal); ``-R`` and ``!reasoning`` change it.
    show_reasoning: bool | None = None
    #: ``-T``/``--functions``: offered with every turn; and the chain's settings.
    tools: tuple[Any, ...] = ()
    tool_choice: str = "auto"
    chain: dict[str, Any] = field(default_factory=dict)
    #: ``-a``/``--at`` and ``!attach``: sent with the next message, then cleared.
    attachments: tuple[Attachment, ...] = ()
    store_attachments: bool = False

    def message(self, text: str) -> str:
        """What the next turn sends for the line ``text``."""
        if self.wrap is not None:
            text = self.wrap(text)
        if self.context:
            text, self.context = f"{self.context}\n\n{text}", None
        return text

    @property
    def model(self) -> Model:
        return self.conversation.model

    def prompt_line(self) -> str:
        line = "> "
        if self.next_prefill is not None:
            line = f"prefill {self.next_prefill!r} > "
        if self.attachments:
            count = len(self.attachments)
            line = f"[{count} attachment{'s' if count > 1 else ''}] {line}"
        return line

    def turn_prefill(self) -> str | None:
        prefill = self.next_prefill if self.next_prefill is not None else self.prefill
        self.next_prefill = None
        return prefill

    def spec(self, text: str) -> PromptSpec:
        """The next turn's prompt spec, for the line ``text`` (it uses up a ``!prefill``,
        the fragments' context and the attachments)."""
        from llmcli.spec import PromptSpec

        attachments, self.attachments = self.attachments, ()
        return PromptSpec(self.message(text), system=self.system, prefill=self.turn_prefill(),
                          key=self.key, log=self.log, conversation=self.conversation,
                          options=self.options, schema=self.schema, tools=self.tools,
                          tool_choice=self.tool_choice, attachments=attachments,
                          store_attachments=self.store_attachments)


def _read_line(prompt: str) -> str | None:
    """One line from the user (readline gives history and editing); None at end of input."""
    try:
        return input(prompt)
    except EOFError:
        return None


def _enable_history() -> None:
    # Arrow-key history and line editing for input(); not available on every platform.
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401


def _read_multi(terminator: str) -> str | None:
    lines: list[str] = []
    while True:
        line = _read_line("")
        if line is None:
            return None
        if line.strip() == terminator:
            return "\n".join(lines)
        lines.append(line)


def _switch_model(state: ChatState, name: str) -> None:
    from llmcli import api

    model = api.get_model(name)
    options: dict[str, Any] = {}
    if state.option_pairs:
        try:
            options = parse_options(model, state.option_pairs)
            api.validate_options(model, options)
        except OptionsError as exc:
            click.echo(f"The -o options do not apply to {model.model_id} ({exc}); "
                       "continuing without them.", err=True)
            options = {}
    state.conversation.model = model
    state.options = options
    click.echo(f"Model: {model.model_id} (prefill: {model.prefill_support.value})", err=True)


def _command(state: ChatState, line: str) -> str | None:
    """Run a ``!`` command; returns the message to send, if the command produced one."""
    word, _, rest = line.partition(" ")
    if word == "!prefill":
        state.next_prefill = rest if rest.strip() else None
    elif word == "!attach":
        _attach(state, rest.strip())
    elif word == "!multi":
        terminator = f"!end {rest.strip()}".strip()
        text = _read_multi(terminator)
        if text is None:
            raise EOFError
        return text
    elif word == "!edit":
        text = click.edit("")
        if text is None or not text.strip():
            click.echo("Nothing to send.", err=True)
            return None
        return text.rstrip("\n")
    elif word == "!model":
        if not rest.strip():
            click.echo(f"Model: {state.model.model_id}", err=True)
        else:
            _switch_model(state, rest.strip())
    elif word == "!reasoning":
        choice = rest.strip().lower()
        if choice not in ("", "on", "off"):
            click.echo("!reasoning takes on or off", err=True)
            return None
        shown = ReasoningView(state.show_reasoning).enabled
        state.show_reasoning = (not shown) if not choice else choice == "on"
        click.echo(f"Reasoning: {'shown' if state.show_reasoning else 'hidden'}", err=True)
    elif word == "!help":
        click.echo(HELP, err=True)
    else:
        click.echo(f"Unknown chat command {word!r}; !help lists them.", err=True)
    return None


def _attach(state: ChatState, reference: str) -> None:
    """``!attach PATH``: read and check it now (a missing file or a type the model cannot
    take is said at once), then send it with the next message."""
    from llmcli import api

    if not reference:
        names = ", ".join(a.label for a in state.attachments) or "none"
        click.echo(f"Attachments for the next message: {names}", err=True)
        return
    attachment = api.check_attachment(state.model, state.options,
                                      attachment_from(reference))
    state.attachments = (*state.attachments, attachment)
    click.echo(f"Attached {attachment.label} ({attachment.type}, {attachment.size} bytes) "
               "to the next message.", err=True)


def _turn(state: ChatState, text: str, out: TextIO) -> None:
    """Send one message and stream the reply; Ctrl-C stops the reply, not the chat."""
    from llmcli import api

    spec = state.spec(text)
    response: Any = (api.chain(state.model, spec, **state.chain) if spec.tools
                     else api.prompt(state.model, spec))
    _stream(state, response, out)


def _continue(state: ChatState, out: TextIO) -> None:
    """``!continue``: the last reply, continued where it was cut off; only the new text is
    written (the cut-off reply is on the screen above), the log has the whole reply."""
    from llmcli import api

    response = api.continue_reply(state.conversation, model=state.model, key=state.key,
                                  log=state.log, options=state.options)
    _stream(state, response, out, skip=len(response.prefill))


def _stream(state: ChatState, response: Any, out: TextIO, skip: int = 0) -> None:
    view = ReplyView(out, state.show_reasoning, skip)
    try:
        for part in response.parts():  # reasoning on stderr, text on out
            view.write(part)
    except KeyboardInterrupt:
        view.thoughts.close()
        response.close()
        out.write("\n")
        out.flush()
        what = "logged as partial" if state.log else "kept in this chat"
        click.echo(f"Interrupted: the reply so far is {what}.", err=True)
        return
    finally:
        view.end()
        warn_if_not_logged(response)


@click.command(name="chat")
@shared("model")
@shared("system", help="System prompt, sent with every turn.")
@shared("prefill", help="Every reply starts with this (!prefill changes one turn).")
@shared("option")
@shared("continue")
@shared("cid")
@shared("no_log", help="Do not log the turns.")
@click.option("--reasoning/--no-reasoning", " /-R", "show_reasoning", default=None,
              help="Show the model's reasoning (default: on a terminal), or hide it (-R).")
@shared("key")
@shared("template", help="Use the saved template NAME: its system prompt, model, prefill and "
        "options, and its prompt around each message.")
@shared("param")
@shared("fragment", help="Add a file's or a URL's contents before the first message "
        "(repeatable).")
@shared("system_fragment")
@shared("attachment", help="Send an image or a PDF with the first message (repeatable); "
        "!attach adds one to any message.")
@shared("attachment_type")
@shared("store_attachments")
@tool_options
def chat(
    model_name: str | None,
    system: str | None,
    prefill: str | None,
    options: tuple[tuple[str, str], ...],
    continue_: bool,
    conversation_id: str | None,
    no_log: bool,
    show_reasoning: bool | None,
    key: str | None,
    template_name: str | None,
    params: tuple[tuple[str, str], ...],
    fragments: tuple[str, ...],
    system_fragments: tuple[str, ...],
    attachments: tuple[str, ...] = (),
    typed_attachments: tuple[tuple[str, str], ...] = (),
    store_attachments: bool = False,
    tool_flags: ToolFlags = NO_TOOLS,
) -> None:
    """Chat with a model; each turn is logged in one conversation.

    Tools given with -T or --functions stay on for the whole chat.

    \b
    llmcli chat -m claude-haiku-4-5
    llmcli chat -c                 # continue the last conversation, with its model
    llmcli chat -t reviewer -f main.py   # a saved template, a file to talk about
    > !prefill ```python           # the next reply starts with ```python
    """
    from llmcli import api, config

    config.mark_long_lived()
    inputs = None
    if template_name is not None or params or fragments or system_fragments:
        from llmcli.templates import resolve_chat

        inputs = resolve_chat(template_name, params, fragments, system_fragments,
                              system=system, model=model_name, prefill=prefill)
        system, model_name, prefill = inputs.system, inputs.model, inputs.prefill
    if continue_ or conversation_id:
        conversation = api.load_conversation(conversation_id, model=model_name)
    else:
        conversation = api.get_model(model_name).conversation()
    model = conversation.model
    parsed = {**(inputs.options if inputs else {}), **parse_options(model, options)}
    api.validate_options(model, parsed)  # a typo fails now, not at the first turn
    if not no_log and config.logging_enabled():
        from llmcli.log import open_db

        open_db().close()  # a log that cannot be written fails now, not after a message
    state = ChatState(conversation, system, prefill, option_pairs=options, options=parsed,
                      key=key, log=not no_log, context=inputs.context if inputs else None,
                      wrap=inputs.message if inputs else None,
                      schema=inputs.schema if inputs else None,
                      show_reasoning=show_reasoning,
                      tools=tool_flags.tools(), chain=tool_flags.chain())
    state.tool_choice = tool_flags.tool_choice
    state.attachments = attachments_from(attachments, typed_attachments, stdin=False)
    state.store_attachments = store_attachments
    _enable_history()
    click.echo(f"Chatting with {model.model_id} (prefill: "
               f"{model.get_prefill_support(api.validate_options(model, parsed)).value})",
               err=True)
    click.echo(HELP, err=True)
    out = sys.stdout
    while True:
        try:
            line = _read_line(state.prompt_line())
            if line is None:
                break
            if line.strip() in EXIT_WORDS:
                break
            if not line.strip():
                continue
            text: str | None = line
            if line.strip() == "!continue":
                _continue(state, out)
                continue
            if line.startswith("!"):
                try:
                    text = _command(state, line.rstrip("\n"))
                except EOFError:
                    break
            if text is None or not text.strip():
                continue
            _turn(state, text, out)
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as in a shell
            out.write("\n")
            out.flush()
        except LLMCLIError as exc:  # one turn failed; the chat goes on
            from llmcli.config import scrub

            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.echo(f"Error: {scrub(message)}", err=True)
    out.write("\n")  # leave the shell's prompt on a line of its own
    out.flush()

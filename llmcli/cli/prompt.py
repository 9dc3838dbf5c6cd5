"""``llmcli prompt`` — the default command."""

from __future__ import annotations

import difflib
import json
import re
import sys
from typing import TYPE_CHECKING, Any

import click

from llmcli import progress
from llmcli.cli.common import (
    attachments_from,
    extract_code_block,
    parse_options,
    read_stdin,
    shared,
    warn_if_not_logged,
)
from llmcli.cli.render import ReplyView
from llmcli.cli.tools_cmd import NO_TOOLS, ToolFlags, tool_options
from llmcli.errors import LLMCLIError, PromptInputError, TemplateError

if TYPE_CHECKING:
    from llmcli.templates import Template

#: Commands of simonw/llm that llmcli does not have: ``llmcli embed`` must not become a
#: prompt sent to the default model.
LLM_COMMANDS = ("collections", "embed", "embed-models", "embed-multi", "fragments", "openai",
                "schemas", "similar", "tools")

_COMMAND_LIKE = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


def refuse_command_word(args: list[str], commands: list[str]) -> None:
    """Refuse a first argument that is meant as a command, not a prompt: one of llm's
    commands, or (with nothing after it) a near miss of a command's name."""
    word = args[0]
    if not _COMMAND_LIKE.fullmatch(word):
        return
    hint = f"to send it as a prompt, run: llmcli prompt {word}"
    if word in LLM_COMMANDS:
        raise PromptInputError(f"'{word}' is an llm command that llmcli does not have; {hint}")
    if len(args) == 1:
        close = difflib.get_close_matches(word, [*commands, *LLM_COMMANDS], n=3, cutoff=0.75)
        if close:
            raise PromptInputError(f"Unknown command '{word}' (did you mean: {', '.join(close)}?); "
                                   f"{hint}")


@click.command(name="prompt")
@click.argument("prompt", required=False)
@shared("model")
@shared("system")
@shared("prefill")
@click.option("--hide-prefill", is_flag=True,
              help="Print only the continuation (the log still stores the full text).")
@shared("option")
@click.option("--no-stream", is_flag=True, help="Wait for the whole reply instead of streaming.")
@shared("continue")
@shared("cid")
@click.option("--continue-reply", "continue_reply", is_flag=True,
              help="Continue the conversation's last reply where it was cut off (max_tokens "
              "or interrupted): its text is the prefill (the latest conversation, or -c/--cid).")
@click.option("--reasoning/--no-reasoning", " /-R", "show_reasoning", default=None,
              help="Show the model's reasoning on stderr (default: on a terminal only), or "
              "hide it (-R).")
@shared("no_log")
@shared("key")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: model, prefill, text, continuation, usage, ids.")
@click.option("-x", "--extract", is_flag=True,
              help="Print only the first fenced code block of the reply (all of it if none).")
@click.option("-u", "--usage", "show_usage", is_flag=True,
              help="Print token usage to standard error.")
@click.option("--schema", "schema", metavar="SCHEMA",
              help="The reply is JSON conforming to SCHEMA: a JSON Schema (inline or a file) "
              "or fields such as 'name, age int, bio: one sentence'.")
@click.option("--schema-multi", "schema_multi", metavar="SCHEMA",
              help="As --schema, for a list of such objects: {\"items\": [...]}.")
@click.option("--grammar", "grammar_file", metavar="FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="The reply follows this grammar (GBNF or Lark): local models, llama.cpp "
              "servers.")
@shared("template")
@shared("param")
@click.option("--save", "save_as", metavar="NAME",
              help="Save this command's prompt, system, model, options and prefill as the "
              "template NAME instead of running it.")
@shared("fragment")
@shared("system_fragment")
@shared("attachment")
@shared("attachment_type")
@shared("store_attachments")
@tool_options
def prompt(
    prompt: str | None,
    model_name: str | None,
    system: str | None,
    prefill: str | None,
    hide_prefill: bool,
    options: tuple[tuple[str, str], ...],
    no_stream: bool,
    continue_: bool,
    conversation_id: str | None,
    continue_reply: bool,
    show_reasoning: bool | None,
    no_log: bool,
    key: str | None,
    as_json: bool,
    extract: bool,
    show_usage: bool,
    schema: str | None,
    schema_multi: str | None,
    template_name: str | None,
    params: tuple[tuple[str, str], ...],
    save_as: str | None,
    fragments: tuple[str, ...],
    system_fragments: tuple[str, ...],
    grammar_file: str | None,
    attachments: tuple[str, ...] = (),
    typed_attachments: tuple[tuple[str, str], ...] = (),
    store_attachments: bool = False,
    tool_flags: ToolFlags = NO_TOOLS,
) -> None:
    """Send PROMPT (and any piped standard input) to a model.

    \b
    llmcli "Name three US states." --prefill "1."
    echo "def add(a, b):" | llmcli "Explain this code" -m claude-haiku-4-5
    llmcli -c "And two more?"          # continue the last conversation
    llmcli "Reverse a string" --prefill '```python' -x   # just the code
    llmcli -t summarize -f notes.md    # a saved template, with a file's contents
    """
    from llmcli import api
    from llmcli.spec import PromptSpec

    if schema and schema_multi:
        raise PromptInputError("Give --schema or --schema-multi, not both")
    parsed_schema = None
    if schema or schema_multi:
        from llmcli.schema import multi, parse_schema

        parsed_schema = parse_schema(schema or schema_multi or "")
        if schema_multi:
            parsed_schema = multi(parsed_schema)
    if save_as is not None:
        _save_template(save_as, prompt, system, model_name, prefill, options, params, extract,
                       fragments, system_fragments, parsed_schema, refused={
                           "-t/--template": template_name is not None,
                           "-a/--at": bool(attachments or typed_attachments),
                           "-c/--cid": continue_ or conversation_id is not None})
        return

    if extract and as_json:
        raise PromptInputError("--extract prints text; it cannot be combined with --json")
    response: Any
    if continue_reply:
        if (prompt or prefill is not None or template_name or fragments or system_fragments
                or attachments or typed_attachments):
            raise PromptInputError("--continue-reply takes no prompt, prefill, template or "
                                   "attachment: it continues the last reply with its own")
        conversation = api.load_conversation(conversation_id, model=model_name)
        model = conversation.model
        response = api.continue_reply(
            conversation.id, model=model, options=parse_options(model, options),
            stream=not no_stream and not as_json and not extract, key=key, log=not no_log)
    else:
        given = attachments_from(attachments, typed_attachments)
        stdin_text = "" if any(a.content is not None for a in given) else read_stdin()
        text = "\n\n".join(part for part in (stdin_text.strip("\n"), prompt or "") if part.strip())
        template_options: dict[str, Any] = {}
        if template_name is not None or params or fragments or system_fragments:
            from llmcli.templates import resolve_inputs

            inputs = resolve_inputs(template_name, params, fragments, system_fragments, text=text,
                                    system=system, model=model_name, prefill=prefill,
                                    extract=extract and not as_json)
            text, system, model_name, prefill = (inputs.text, inputs.system, inputs.model,
                                                 inputs.prefill)
            template_options, extract = inputs.options, inputs.extract and not as_json
            parsed_schema = parsed_schema or inputs.schema
        if not text.strip():
            raise PromptInputError("Empty prompt: pass PROMPT or pipe text on standard input")

        if continue_ or conversation_id:
            conversation = api.load_conversation(conversation_id, model=model_name)
            model = conversation.model
        else:
            model = api.get_model(model_name)
            conversation = model.conversation()
        spec = PromptSpec(
            text,
            system=system,
            prefill=prefill,
            stream=not no_stream and not as_json and not extract,
            key=key,
            log=not no_log,  # the API opens the log now: one that cannot be written fails here
            conversation=conversation,
            options={**template_options, **parse_options(model, options)},
            schema=parsed_schema,
            grammar=_read_grammar(grammar_file),
            attachments=given,
            store_attachments=store_attachments,
            tools=tool_flags.tools(),
            tool_choice=tool_flags.tool_choice,
        )
        if spec.tools:
            response = api.chain(model, spec, **tool_flags.chain())
        else:
            response = api.prompt(model, spec)

    if as_json:
        try:
            with progress.waiting():  # a spinner on a terminal's stderr until it is done
                response.text()
        except KeyboardInterrupt:
            response.close()
            click.echo(json.dumps(response.to_dict(), ensure_ascii=False))
            _interrupted(response, newline=False)
        data = response.to_dict()
        click.echo(json.dumps(data, ensure_ascii=False))
        warn_if_not_logged(response)
        _print_usage(response, show_usage)
        return

    if extract:
        try:
            with progress.waiting():
                text = response.text()
        except KeyboardInterrupt:
            _interrupted(response)
        if hide_prefill:
            text = response.continuation
        block = extract_code_block(text)
        sys.stdout.write(block if block is not None else text if text.endswith("\n")
                         else text + "\n")
        sys.stdout.flush()
        warn_if_not_logged(response)
        _print_usage(response, show_usage)
        return

    view = ReplyView(sys.stdout, show_reasoning,
                     skip=len(response.prefill) if hide_prefill else 0)
    try:
        for part in progress.until_first(response.parts()):  # a spinner until the first
            view.write(part)
    except KeyboardInterrupt:
        view.thoughts.close()
        _interrupted(response)
    except LLMCLIError:
        view.end()
        warn_if_not_logged(response)
        raise
    view.end()
    warn_if_not_logged(response)
    _print_usage(response, show_usage)


def _save_template(name: str, prompt: str | None, system: str | None, model: str | None,
                   prefill: str | None, options: tuple[tuple[str, str], ...],
                   params: tuple[tuple[str, str], ...], extract: bool,
                   fragments: tuple[str, ...], system_fragments: tuple[str, ...],
                   schema: dict[str, Any] | None, refused: dict[str, bool]) -> None:
    """``--save NAME``: the PROMPT argument, not piped input (that is the template's input
    when it is used), and the options that make a template."""
    from llmcli.templates import save_template

    given = [flag for flag, used in refused.items() if used]
    if given:
        raise PromptInputError(f"--save cannot be combined with {', '.join(given)}")
    template = template_from_command(
        name, prompt=prompt, system=system, model=model, prefill=prefill, options=options,
        params=params, extract=extract, fragments=fragments, system_fragments=system_fragments,
        schema=schema)
    click.echo(f"Saved template {name!r} to {save_template(template)}", err=True)


def template_from_command(
    name: str,
    *,
    prompt: str | None,
    system: str | None,
    model: str | None,
    prefill: str | None,
    options: tuple[tuple[str, str], ...],
    params: tuple[tuple[str, str], ...],
    extract: bool,
    fragments: tuple[str, ...],
    system_fragments: tuple[str, ...],
    schema: dict[str, Any] | None = None,
) -> Template:
    """``--save NAME``: the command's prompt, system, model, options, prefill, -p values (as
    defaults), -x and fragments (paths made absolute), checked by the model when -m names
    one."""
    from llmcli.fragments import absolute
    from llmcli.templates import Template, template_path

    template_path(name)  # a bad name fails before anything else
    if not any((prompt, system, model, prefill, options, extract, fragments, system_fragments,
                schema)):
        raise TemplateError("Nothing to save: give a prompt, -s, -m, --prefill, -o, -x, -f "
                            "or --schema")
    parsed: dict[str, Any] = {}
    if model is not None:
        from llmcli import api

        resolved = api.get_model(model)
        parsed = parse_options(resolved, options)
        api.validate_options(resolved, parsed)
    else:
        for key, value in options:
            previous = parsed.get(key)
            parsed[key] = value if previous is None else [
                *(previous if isinstance(previous, list) else [previous]), value]
    return Template(
        name, prompt=prompt or None, system=system, model=model, prefill=prefill or None,
        options=parsed, defaults=dict(params), extract=extract,
        fragments=[absolute(f) for f in fragments],
        system_fragments=[absolute(f) for f in system_fragments], schema=schema,
    )


def _read_grammar(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptInputError(f"Cannot read grammar file {path}: {exc}") from None


def _print_usage(response: Any, show: bool) -> None:
    if not show:
        return
    from llmcli.cli.render import usage_line

    response.usage()  # the whole reply first
    click.echo("Token usage: " + usage_line(response.record().row()), err=True)


def _interrupted(response: Any, newline: bool = True) -> None:
    response.close()
    if newline:
        sys.stdout.write("\n")
    sys.stdout.flush()
    if response.log_error:
        warn_if_not_logged(response)
        click.echo("Interrupted.", err=True)
    else:
        click.echo("Interrupted: the partial response was logged.", err=True)
    sys.exit(130)

"""Rough edges of issue #15: broken or read-only files in the user directory, refused-prefill
suggestions, option errors in the model's words, one rule for empty prompts, every response
in a conversation, and docs that must match what the code does."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import model_validator

import llmcli
from llmcli import Model, Options, PrefillSupport
from llmcli.cli import cli
from llmcli.errors import LLMCLIError, OptionsError, PrefillUnsupportedError
from llmcli.models import validate_options
from tests import docs_tools


@pytest.fixture
def run(test_models):
    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, list(args), input=input)

    return invoke


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Errno" not in lines[0] and "Traceback" not in result.output
    return lines[0]


def test_malformed_keys_file_affects_only_stored_keys(run, user_dir: Path) -> None:
    user_dir.mkdir(parents=True)
    keys = user_dir / "keys.json"
    keys.write_text("{not json")
    result = run("models")
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"Warning: The keys file {keys} is not valid JSON; fix or remove "
                             "it\n")
    assert "test-eats" in result.stdout and "test-keyed" in result.stdout
    assert run("-m", "test-eats", "x").stdout == "reply to: x\n"  # needs no key
    result = run("-m", "test-keyed", "x")
    assert result.exit_code == 1
    assert f"The keys file {keys} is not valid JSON" in one_line(result)


def test_malformed_local_models_file_affects_only_its_models(user_dir: Path,
                                                              load_plugins) -> None:
    pytest.importorskip("llmcli_local")
    user_dir.mkdir(parents=True)
    registry = user_dir / "local-models.json"
    registry.write_text('{"models": [{"name": "mine"}]}')
    load_plugins("llmcli-local")
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"Warning: The local models file {registry} is malformed "
                             "(models.0.path: Field required); fix or remove it\n")
    assert result.stdout.splitlines()[1].startswith("smollm2")  # the built-in model stays
    assert llmcli.get_model("smollm2").model_id == "smollm2"
    # The commands that manage the file refuse to overwrite it, in one line.
    result = CliRunner().invoke(cli, ["local", "list"])
    assert result.exit_code == 1 and "is malformed" in one_line(result)
    registry.write_text("{not json")
    llmcli.plugins.reset()
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0 and result.stderr == (
        f"Warning: The local models file {registry} is malformed; fix or remove it\n")


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write in the user directory fails as on a read-only file system (tests run as
    root, which permission bits do not stop)."""
    user = os.environ["LLMCLI_USER_PATH"]

    def refuse(path: object) -> None:
        if str(path).startswith(user):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    real_open, real_write, real_touch = os.open, Path.write_text, Path.touch
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (
        refuse(p) if a and a[0] & (os.O_WRONLY | os.O_RDWR) else None) or real_open(p, *a, **k))
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: refuse(self) or
                        real_write(self, *a, **k))
    monkeypatch.setattr(Path, "touch", lambda self, *a, **k: refuse(self) or
                        real_touch(self, *a, **k))


@pytest.mark.parametrize(("args", "name"), [
    (["keys", "set", "openai", "--value", "sk-x"], "keys.json"),
    (["models", "default", "test-eats"], "default_model.txt"),
    (["logs", "off"], "logs-off"),
])
def test_read_only_user_directory_names_the_file(run, user_dir: Path, read_only, args,
                                                 name) -> None:
    user_dir.mkdir(parents=True, exist_ok=True)
    result = run(*args)
    assert result.exit_code == 1
    assert one_line(result) == f"Error: Cannot write {user_dir / name}: Read-only file system"


def test_read_only_user_directory_local_models_file(user_dir: Path, read_only) -> None:
    pytest.importorskip("llmcli_local")
    from llmcli_local import registry

    user_dir.mkdir(parents=True, exist_ok=True)
    with pytest.raises(LLMCLIError) as info:
        registry.save_registry(registry.Registry())
    assert str(info.value) == (f"Cannot write {user_dir / 'local-models.json'}: "
                               "Read-only file system")


def test_refused_prefill_suggests_native_models_usable_now_first(test_models,
                                                                monkeypatch) -> None:
    model = llmcli.get_model("test-unsupported")
    with pytest.raises(PrefillUnsupportedError) as info:
        model.prompt("x", prefill="[")
    # Not test-emulated (emulation is what a strict refusal avoids); the keyed one last.
    assert info.value.alternatives == ["test-eats", "test-echoes", "test-tools", "test-keyed"]
    from llmcli import prepare

    keyed = llmcli.get_model("test-keyed")
    monkeypatch.setattr(prepare, "_usable_now", lambda m: m is keyed)
    with pytest.raises(PrefillUnsupportedError) as info:
        model.prompt("x", prefill="[")
    assert info.value.alternatives[0] == "test-keyed"


class StrictOptions(Options):
    temperature: float | None = None
    thinking: bool = False

    @model_validator(mode="after")
    def _no_temperature_with_thinking(self) -> StrictOptions:
        if self.thinking and self.temperature is not None:
            raise ValueError("temperature is not accepted with -o thinking 1")
        return self


class Strict(Model):
    model_id = "strict"
    Options = StrictOptions


def test_option_errors_speak_the_models_words() -> None:
    with pytest.raises(OptionsError) as info:
        validate_options(Strict(), {"thinking": True, "temperature": 0.5})
    assert str(info.value) == ("Options for strict: temperature is not accepted with "
                               "-o thinking 1")
    with pytest.raises(OptionsError) as info:
        validate_options(Strict(), {"temperature": "hot"})
    assert str(info.value).startswith("Option 'temperature' for strict: ")


@pytest.mark.parametrize("text", ["", "  \n"])
def test_empty_prompt_is_refused_in_python_as_on_the_command_line(test_models, text) -> None:
    with pytest.raises(LLMCLIError, match="Empty prompt"):
        llmcli.get_model("test-eats").prompt(text)
    assert not test_models.requests


def test_a_plain_prompt_belongs_to_a_conversation(test_models, user_dir: Path) -> None:
    response = llmcli.get_model("test-eats").prompt("hi")
    response.text()
    assert response.conversation is not None
    assert response.to_dict()["conversation_id"] == response.conversation.id
    conversation = llmcli.load_conversation()
    assert conversation.id == response.conversation.id
    assert [m.content for m in conversation.history()] == ["hi", "reply to: hi"]


# -- docs that must match the code -----------------------------------------------------------


def test_errors_md_refusal_example_names_a_model_that_refuses(load_plugins) -> None:
    pytest.importorskip("llmcli_openai")
    load_plugins("llmcli-openai")
    text = (docs_tools.DOCS / "errors.md").read_text()
    names = re.findall(r"Error: Model '([^']+)' does not support prefill", text)
    assert names
    for name in names:
        model = llmcli.get_model(name)
        assert model.get_prefill_support(model.Options()) is PrefillSupport.UNSUPPORTED, name


def test_cli_md_models_sample_matches_the_real_rows(load_plugins) -> None:
    pytest.importorskip("llmcli_anthropic")
    pytest.importorskip("llmcli_local")
    load_plugins("llmcli-local", "llmcli-anthropic")
    text = (docs_tools.DOCS / "cli.md").read_text()
    sample = re.search(r"\$ llmcli models \| cut -f1,2,4[^\n]*\n(.*?)…\n", text, re.DOTALL)
    assert sample, "the models sample in docs/cli.md"
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    real = {}
    for line in result.stdout.splitlines():
        cells = line.split("\t")
        real[cells[0]] = "\t".join([cells[0], cells[1], cells[3]])
    for line in sample.group(1).splitlines():
        assert real.get(line.split("\t")[0]) == line, (
            f"docs/cli.md shows\n{line}\nbut llmcli models prints\n"
            f"{real.get(line.split(chr(9))[0])}")


def test_cli_md_json_sample_has_the_real_keys(test_models) -> None:
    text = (docs_tools.DOCS / "cli.md").read_text()
    sample = re.search(r"`--json` prints:\n\n```json\n(.*?)```", text, re.DOTALL)
    assert sample
    # The usage details shown are an example of what a backend reports (smollm2's): their
    # keys vary by backend, so only the record's own keys are checked.
    shown = re.sub(r'"details": \{[^}]*\}', '"details": {}', sample.group(1))
    keys = re.findall(r'"(\w+)": ', shown)
    response = llmcli.get_model("test-eats").prompt("x", log=False)
    response.text()
    data = response.to_dict()
    assert [k for k in keys if k in data or k not in data["usage"]] == list(data)
    assert [k for k in keys if k in data["usage"]] == list(data["usage"])
    assert json.dumps(data)


# -- the spinner while a reply has not started, and a plugin's stages on the same line -------


class FakeTerminal:
    """A text stream that says it is a terminal and keeps what was written."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.written)


def test_spinner_on_a_terminal_until_the_first_text(run) -> None:
    from llmcli import progress

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(progress, "is_terminal", lambda stream: True)
        result = run("-m", "test-eats", "x", "-o", "reply", "slow start", "-o", "chunk_size",
                     "20", "-o", "delay", "0.6")
        assert result.exit_code == 0 and result.stdout == "slow start\n"
        frames = [c for c in result.stderr if c in progress.FRAMES]
        assert frames and result.stderr.endswith("\r\x1b[K")  # drawn, then erased
        # A reply that starts at once shows nothing; off a terminal never anything.
        assert run("-m", "test-eats", "x", "-o", "reply", "fast").stderr == ""
    assert run("-m", "test-eats", "x", "-o", "reply", "slow", "-o", "delay", "0.5"
               ).stderr == ""


def test_stages_take_over_the_spinners_line(monkeypatch) -> None:
    import sys
    import time

    from llmcli import progress

    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    spinner = progress.waiting(delay=10)  # would not show for 10 s by itself
    with progress.stages("Converting x.gguf (once)") as show:
        show("dequantizing tensors 3/30")
        time.sleep(0.25)
        assert "Converting x.gguf (once): dequantizing tensors 3/30 (0 s)" in terminal.text
    assert spinner.text == ""  # the spinner's own text again
    spinner.stop()
    assert terminal.text.endswith("\r\x1b[K")
    # Alone on a terminal: its own line, erased at the end; off a terminal: nothing.
    alone = FakeTerminal()
    with progress.stages("Step", stream=alone) as show:
        show("one")
        time.sleep(0.15)
    assert "Step: one" in alone.text and alone.text.endswith("\r\x1b[K")
    quiet = FakeTerminal()
    quiet.isatty = lambda: False  # type: ignore[method-assign]
    with progress.stages("Step", stream=quiet) as show:
        show("one")
    assert quiet.written == []

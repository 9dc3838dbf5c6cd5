"""llmcli aliases list|set|remove|path, and aliases resolving wherever a model is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmcli import api
from llmcli.cli import cli


@pytest.fixture
def run(test_models):
    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, list(args), input=input)

    return invoke


def test_set_use_list_remove(run, test_models, user_dir: Path) -> None:
    result = run("aliases", "set", "fast", "t-echoes")  # a model's alias names it too
    assert result.exit_code == 0, result.output
    assert json.loads((user_dir / "aliases.json").read_text()) == {"fast": "test-echoes"}
    assert run("-m", "fast", "hi", "--prefill", "1.", "-o", "reply", " x").stdout == "1. x\n"
    assert test_models.requests[-1].model_id == "test-echoes"
    assert api.get_model("fast").model_id == "test-echoes"  # the Python API too

    listed = run("aliases").stdout.splitlines()
    assert listed[0] == "t-eats        : test-eats"  # the models' own, then the user's
    assert listed[-1] == "fast          : test-echoes"
    assert run("aliases", "list").stdout == run("aliases").stdout
    data = json.loads(run("aliases", "list", "--json").stdout)
    assert data["fast"] == "test-echoes" and data["t-keyed"] == "test-keyed"
    models = json.loads(run("models", "--json").stdout)
    echoes = next(m for m in models if m["model_id"] == "test-echoes")
    assert echoes["aliases"] == ["t-echoes", "fast"]

    assert run("aliases", "remove", "fast").exit_code == 0
    assert json.loads((user_dir / "aliases.json").read_text()) == {}
    result = run("-m", "fast", "hi")
    assert result.exit_code == 1 and "Unknown model" in result.stderr


def test_a_user_alias_wins_over_a_model_name(run, test_models) -> None:
    run("aliases", "set", "test-eats", "test-echoes")
    assert api.get_model("test-eats").model_id == "test-echoes"
    assert "\ntest-eats     : test-echoes\n" in run("aliases").stdout


def test_errors_are_one_line(run, user_dir: Path) -> None:
    result = run("aliases", "set", "x", "test-eatz")
    assert result.exit_code == 1 and "test-eats" in result.stderr  # a suggestion
    assert len(result.stderr.splitlines()) == 1
    assert not (user_dir / "aliases.json").exists()
    run("aliases", "set", "mine", "test-eats")
    result = run("aliases", "remove", "t-eats")
    assert result.exit_code == 1
    assert result.stderr == "Error: No alias named 't-eats' was set (set: mine)\n"
    (user_dir / "aliases.json").write_text("[1]")
    result = run("-m", "test-eats", "x")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {user_dir / 'aliases.json'} must hold a JSON object\n"


def test_path(run, user_dir: Path) -> None:
    assert run("aliases", "path").stdout == f"{user_dir / 'aliases.json'}\n"

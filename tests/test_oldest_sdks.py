"""``tests/oldest_sdks.py``: which plugins ``make test-oldest-sdks`` installs, and with which
releases of their SDKs."""

from __future__ import annotations

from pathlib import Path

from tests.oldest_sdks import ROOT, constraints, plugins


def write(path: Path, dependencies: list[str]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    listed = ", ".join(f'"{d}"' for d in dependencies)
    (path / "pyproject.toml").write_text(
        f'[project]\nname = "{path.name}"\nversion = "0"\ndependencies = [{listed}]\n')


def test_the_repository_pins_every_provider_sdk_bound() -> None:
    taking_part = {p.name for p in plugins()}
    assert {"anthropic", "mistral", "openai"} <= taking_part
    assert "local" not in taking_part  # torch: tested in the main environment
    pinned = constraints()
    for name in ("anthropic", "mistralai", "openai"):
        assert name in pinned
    # Each pin is exactly the bound its plugin declares.
    declared = (ROOT / "plugins" / "openai" / "pyproject.toml").read_text()
    assert f'"openai>={pinned["openai"]}"' in declared
    # The core declares pydantic and click too: those are left to the resolver.
    assert "pydantic" not in pinned and "click" not in pinned


def test_a_new_plugin_is_picked_up_generically(tmp_path: Path) -> None:
    write(tmp_path, ["click>=8.1", "pydantic>=2.6"])
    write(tmp_path / "plugins" / "gemini", ["llmcli", "google-genai>=1.20,<2", "pydantic>=2.6"])
    write(tmp_path / "plugins" / "other", ["llmcli", "Google_GenAI>=1.30", "httpx"])
    write(tmp_path / "plugins" / "gpu", ["llmcli", "torch>=2.4", "transformers>=4.56"])
    assert [p.name for p in plugins(tmp_path)] == ["gemini", "other"]
    # Names are compared canonically; where two plugins differ, the higher bound holds; a
    # requirement with no lower bound (httpx) pins nothing.
    assert constraints(tmp_path) == {"google-genai": "1.30"}

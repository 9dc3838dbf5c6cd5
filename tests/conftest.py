"""Every test runs in its own user directory with no installed plugin loaded, unless it asks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmcli import plugins


@pytest.fixture(autouse=True)
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "user"
    monkeypatch.setenv("LLMCLI_USER_PATH", str(path))
    monkeypatch.setenv("LLMCLI_LOAD_PLUGINS", "")
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "MISTRAL_API_KEY", "ANTHROPIC_BASE_URL",
                "OPENAI_BASE_URL", "MISTRAL_BASE_URL", "LLMCLI_DEBUG", "LLMCLI_LOCAL_KEEP_ALIVE"):
        monkeypatch.delenv(var, raising=False)
    plugins.reset(clear_extra=True)
    yield path
    plugins.reset(clear_extra=True)


@pytest.fixture
def load_plugins(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``load_plugins("llmcli-anthropic", ...)``: let these installed plugins load."""

    def load(*names: str) -> None:
        monkeypatch.setenv("LLMCLI_LOAD_PLUGINS", ",".join(names))
        plugins.reset()

    return load


@pytest.fixture
def test_models(load_plugins: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> type:
    """Load the test-only models (test-eats, test-echoes, ...); returns the TestModel class."""
    from llmcli_testmodels import TestModel

    monkeypatch.setenv("LLMCLI_TEST_MODELS", "1")
    load_plugins("llmcli-testmodels")
    TestModel.queue.clear()
    TestModel.requests.clear()
    return TestModel

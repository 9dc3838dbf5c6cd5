"""What the pseudo-terminal tests of ``llmcli chat`` share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.chat.terminal import Terminal  # a POSIX pty: not imported on Windows


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    """The terminals a test opens (append each), closed when it ends."""
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()

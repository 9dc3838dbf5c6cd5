"""Logging of every exchange to SQLite (see :mod:`llmcli.log.store`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmcli.log.store import LogStore, logs_path, open_db

if TYPE_CHECKING:
    from llmcli.models import Response

__all__ = ["LogStore", "log_response", "logs_path", "open_db"]


def log_response(response: Response) -> None:
    """The API's default logger: write one response to ``logs.db`` in the user directory."""
    LogStore().log(response)

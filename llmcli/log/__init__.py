"""Logging of every exchange to SQLite (see :mod:`llmcli.log.store`)."""

from __future__ import annotations

from llmcli.log.store import LogStore, Recordable, logs_path, open_db

__all__ = ["LogStore", "Recordable", "log_response", "logs_path", "open_db"]


def log_response(response: Recordable) -> None:
    """Write one response to ``logs.db`` in the user directory."""
    LogStore().log(response)

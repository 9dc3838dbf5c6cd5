"""Logging of every exchange to SQLite (see :mod:`llmcli.log.store`)."""

from __future__ import annotations

from llmcli.log.store import LogStore, Recordable, SharedLog, logs_path, open_db

__all__ = ["LogStore", "Recordable", "SharedLog", "logs_path", "open_db"]

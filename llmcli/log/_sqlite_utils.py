"""``sqlite_utils`` without its optional numpy/pandas imports.

``sqlite_utils.db`` imports numpy and pandas at import time when they are installed, only
to map their scalar types to SQLite column types. llmcli never logs numpy or pandas values,
and with the local runtime installed numpy is always there: importing it costs more than the
rest of a logging command's start-up together (~120 ms of ~300). So, unless something already
imported them, they are hidden for the duration of this one import and restored right after.
"""

from __future__ import annotations

import sys

_HIDDEN = [name for name in ("numpy", "pandas") if name not in sys.modules]
for _name in _HIDDEN:
    sys.modules[_name] = None  # type: ignore[assignment]  # import raises ImportError
try:
    from sqlite_utils import Database
finally:
    for _name in _HIDDEN:
        if sys.modules.get(_name) is None:
            del sys.modules[_name]

__all__ = ["Database"]

"""llmcli: prompt any model with a prefill; the reply always begins with it, exactly once.

The public names are imported on first use (PEP 562), so ``import llmcli.cli`` for
``llmcli --help`` does not pay for pydantic and the API. They are listed once, as the
imports of ``__init__.pyi``: type checkers read that stub, and the index below is built from
it the first time a public name (or ``__all__``) is asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

_exports: dict[str, str] | None = None


def _index() -> dict[str, str]:
    """Public name → defining module, read from the stub's ``from M import N as N`` lines."""
    global _exports
    if _exports is None:
        import ast

        stub = ast.parse((Path(__file__).parent / "__init__.pyi").read_text())
        _exports = {
            alias.asname or alias.name: node.module
            for node in stub.body
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
        }
    return _exports


def __getattr__(name: str) -> Any:
    if name == "__all__":
        value: Any = sorted(_index())
    elif name.startswith("__") or name not in _index():
        raise AttributeError(f"module 'llmcli' has no attribute {name!r}")
    else:
        value = getattr(importlib.import_module(_index()[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_index()])

"""The oldest releases the provider plugins allow, as pip constraints.

``make test-oldest-sdks`` installs the plugins with these constraints in a second
environment (``.venv-oldest``) and runs the provider tests against the fakes there, so that
every lower bound a plugin declares (``anthropic>=...``) is a release that works::

    python tests/oldest_sdks.py             # the constraints: anthropic==0.77.0, ...
    python tests/oldest_sdks.py --plugins   # the plugin directories that take part

Every distribution under ``plugins/`` takes part except those that need torch (the local
runtime, tested in the main environment): a new provider plugin is picked up when it is
added, and each of its ``>=`` bounds is pinned. Requirements the core declares as well
(pydantic, click) are left to the resolver, as the core's own.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _requirements(pyproject: Path) -> list[Requirement]:
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return [Requirement(r) for r in data["project"].get("dependencies", [])]


def plugins(root: Path = ROOT) -> list[Path]:
    """The plugin directories whose requirements are pinned (all but torch's)."""
    found = []
    for pyproject in sorted(root.glob("plugins/*/pyproject.toml")):
        names = {canonicalize_name(r.name) for r in _requirements(pyproject)}
        if "torch" not in names:
            found.append(pyproject.parent)
    return found


def constraints(root: Path = ROOT) -> dict[str, str]:
    """name -> the lowest version the plugins allow, for every ``>=`` bound they declare."""
    core = {canonicalize_name(r.name) for r in _requirements(root / "pyproject.toml")}
    lowest: dict[str, str] = {}
    for directory in plugins(root):
        for requirement in _requirements(directory / "pyproject.toml"):
            name = canonicalize_name(requirement.name)
            if name == "llmcli" or name in core:
                continue
            for spec in requirement.specifier:
                if spec.operator == ">=":
                    # Two plugins with different bounds on one SDK: the higher one holds.
                    known = lowest.get(name)
                    if known is None or Version(spec.version) > Version(known):
                        lowest[name] = spec.version
    return lowest


def main(argv: list[str]) -> int:
    if argv[1:] == ["--plugins"]:
        print("\n".join(str(p.relative_to(ROOT)) for p in plugins()))
        return 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    for name, version in sorted(constraints().items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

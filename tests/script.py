"""The installed ``llmcli`` script, and the environment to run it in as a user would."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["SCRIPT", "env_for"]

SCRIPT = Path(sys.executable).parent / "llmcli"


def env_for(user_dir: Path, **extra: str) -> dict[str, str]:
    """This environment minus every ``LLMCLI_`` variable, with ``user_dir`` as the user
    directory, the test models allowed to register, keep-alive off (local models start no
    worker unless a test asks) and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCLI_")}
    env.update(LLMCLI_USER_PATH=str(user_dir), LLMCLI_TEST_MODELS="1",
               LLMCLI_LOCAL_KEEP_ALIVE="0")
    env.update(extra)
    return env

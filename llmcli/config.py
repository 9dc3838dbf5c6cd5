"""The user directory and the small files in it: keys, the default model, logging on/off."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmcli.errors import ConfigError

__all__ = ["user_dir", "cache_dir", "keys_path", "load_keys", "set_key", "get_key", "default_model",
           "ensure_user_dir", "replace_private", "tighten",
           "set_default_model", "logging_enabled", "set_logging", "aliases_path", "load_aliases",
           "save_aliases", "model_options_path", "load_model_options", "save_model_options",
           "long_lived", "mark_long_lived"]


def user_dir() -> Path:
    """``LLMCLI_USER_PATH`` if set, else the platform's application-data directory."""
    env = os.environ.get("LLMCLI_USER_PATH")
    if env:
        path = Path(env)
    elif sys.platform == "darwin":
        path = Path.home() / "Library" / "Application Support" / "llmcli"
    elif os.name == "nt":
        path = Path(os.environ.get("APPDATA", Path.home())) / "llmcli"
    else:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        path = Path(base) / "llmcli"
    return path


def cache_dir() -> Path:
    """Files llmcli can rebuild, shared by every user directory (the local runtime's converted
    weights): ``LLMCLI_CACHE_PATH`` if set, else the platform's cache directory."""
    env = os.environ.get("LLMCLI_CACHE_PATH")
    if env:
        return Path(env)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llmcli"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "llmcli" / "Cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmcli"


_long_lived = False


def mark_long_lived() -> None:
    """Say that this process will make many calls and keep what it loads (``serve``,
    ``batch``, ``chat`` call it). A plugin that keeps a model warm in a process of its own
    for the calls to come (the local runtime's keep-alive worker) need not start one for a
    process that keeps the model itself."""
    global _long_lived
    _long_lived = True


def long_lived() -> bool:
    """Whether :func:`mark_long_lived` was called in this process."""
    return _long_lived


#: The user directory and the files in it that hold secrets or history: the owner's alone.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def ensure_user_dir() -> Path:
    """The user directory, created readable by its owner only (0700); one that exists
    with a looser mode is tightened, with a notice."""
    path = user_dir()
    try:
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Cannot create the user directory {path}: {exc.strerror}") from exc
    tighten(path)
    return path


def tighten(path: Path) -> None:
    """Take away any permission a directory has beyond 0700, or a file beyond 0600, saying
    so in one line on stderr; nothing when it is not there, is something else, or is not
    ours (then it cannot be changed, and its owner decides)."""
    try:
        info = path.stat()
    except OSError:
        return
    if stat.S_ISDIR(info.st_mode):
        mode = PRIVATE_DIR
    elif stat.S_ISREG(info.st_mode):
        mode = PRIVATE_FILE
    else:
        return
    current = stat.S_IMODE(info.st_mode)
    if not current & ~mode or not hasattr(os, "getuid") or info.st_uid != os.getuid():
        return
    try:
        path.chmod(current & mode)
    except OSError:
        return
    sys.stderr.write(f"llmcli: {path} could be read by other users (mode {current:04o}); "
                     f"now {current & mode:04o}\n")
    sys.stderr.flush()


def keys_path() -> Path:
    return user_dir() / "keys.json"


def load_keys() -> dict[str, str]:
    path = keys_path()
    if not path.exists():
        return {}
    try:
        tighten(path)  # before reading secrets from it
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"Cannot read the keys file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"The keys file {path} is not valid JSON; fix or remove it") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"The keys file {path} must be a JSON object of strings")
    return data


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """One plain line naming the file when it cannot be written (a read-only directory)."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"Cannot write {path}: {exc.strerror or exc}") from exc


def set_key(name: str, value: str) -> None:
    """Store a key. The file is read, changed and replaced under a lock, so that two
    ``llmcli keys set`` at once both keep their key, and replaced whole (a temporary file
    made 0600, then renamed), so that it is never half written nor readable by others."""
    ensure_user_dir()
    path = keys_path()
    with _locked(path):
        keys = load_keys()
        keys[name] = value
        replace_private(path, json.dumps(keys, indent=2) + "\n")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) for changing ``path``, held for the block, on
    the file ``path`` + ``.lock`` beside it; no lock where the platform has no ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with _writing(path):  # a lock that cannot be made: the file cannot be written either
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT,
                     PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def replace_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all, readable by its owner only: a
    temporary file in the same directory, created 0600, flushed to disk, then renamed over
    ``path``. One plain line naming the file when it cannot be written."""
    import tempfile

    with _writing(path):
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def get_key(name: str, env_var: str | None, explicit: str | None = None) -> str | None:
    """An explicit key wins, then the provider's environment variable, then the keys file.

    ``explicit`` may also name a stored key (``--key work``) instead of holding one."""
    keys: dict[str, str] | None = None
    if explicit:
        keys = load_keys()
        return keys.get(explicit, explicit)
    if env_var and os.environ.get(env_var):
        return os.environ[env_var]
    keys = load_keys()
    return keys.get(name)


def _setting_path(name: str) -> Path:
    return user_dir() / name


def default_model() -> str | None:
    path = _setting_path("default_model.txt")
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
                          ) from exc
    return value or None


def set_default_model(model_id: str) -> None:
    ensure_user_dir()
    path = _setting_path("default_model.txt")
    with _writing(path):
        path.write_text(model_id + "\n")


def logging_enabled() -> bool:
    return not _setting_path("logs-off").exists()


def set_logging(enabled: bool) -> None:
    ensure_user_dir()
    path = _setting_path("logs-off")
    with _writing(path):
        if enabled:
            path.unlink(missing_ok=True)
        else:
            path.touch()


# -- aliases.json and model_options.json, in llm's formats --------------------------------------


def _load_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        # No such file (also: the user directory does not exist, or is a file: the command
        # that needs the directory says so).
        return {}
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON; fix or remove it") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def _save_json_object(path: Path, data: dict[str, Any]) -> None:
    ensure_user_dir()
    with _writing(path):
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def aliases_path() -> Path:
    return user_dir() / "aliases.json"


def load_aliases() -> dict[str, str]:
    """The user's aliases: ``{"alias": "model id"}``, as llm's aliases.json."""
    data = _load_json_object(aliases_path())
    if not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"{aliases_path()} must map each alias to a model id (a string)")
    return data


def save_aliases(aliases: dict[str, str]) -> None:
    _save_json_object(aliases_path(), aliases)


def model_options_path() -> Path:
    return user_dir() / "model_options.json"


def load_model_options() -> dict[str, dict[str, Any]]:
    """Default options per model id: ``{"model id": {"option": value}}``, as llm's."""
    data = _load_json_object(model_options_path())
    if not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{model_options_path()} must map each model id to an object")
    return data


def save_model_options(options: dict[str, dict[str, Any]]) -> None:
    _save_json_object(model_options_path(), {k: v for k, v in options.items() if v})


# -- secrets scrubbing -----------------------------------------------------------------------

_runtime_secrets: set[str] = set()
REDACTED = "[REDACTED]"


def remember_secret(value: str | None) -> None:
    """Remember a key used in this process so it can be scrubbed from any message."""
    if value and len(value) >= 4:
        _runtime_secrets.add(value)


def _known_secrets() -> set[str]:
    secrets = set(_runtime_secrets)
    with contextlib.suppress(ConfigError):
        secrets.update(v for v in load_keys().values() if len(v) >= 4)
    for name, value in os.environ.items():
        if (name.endswith(("_API_KEY", "_TOKEN", "_KEY"))) and len(value) >= 4:
            secrets.add(value)
    return secrets


def scrub(text: str) -> str:
    """Replace every known key in ``text`` with [REDACTED]."""
    for secret in sorted(_known_secrets(), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text

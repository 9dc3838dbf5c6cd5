"""The scheduler (continuous batching): sequences join and leave a running batch, each keeps
its own settings, constraint and stops, greedy text is the same batched as alone, a handle
can be cancelled, and requests beyond max_batch or the KV budget wait."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from llmcli_local.config import RuntimeConfig

from llmcli.errors import ConfigError
from tests.local.conftest import configured, without_eos

#: (user message, prefill, settings): prompts of different lengths, every prefill mode.
CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("Hi", "def quicksor", {"max_tokens": 12}),
    ("Give me a URL please, a long one with a path", "The URL is http:", {"max_tokens": 20}),
    ("List states", '["Cal', {"max_tokens": 7, "prefill_mode": "heal"}),
    ("Say something", "", {"max_tokens": 16}),
    ("Test", "This is a te", {"max_tokens": 9, "prefill_mode": "none"}),
    ("Héllo", "naïve caf", {"max_tokens": 14}),
    ("Emoji", "Emoji 🙂", {"max_tokens": 11}),
    ("Code", "def ", {"max_tokens": 18}),
]


def _settings(**given: Any) -> Any:
    from llmcli_local.decode import GenerationSettings

    return GenerationSettings(**given)


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _alone(backend: Any, text: str, prefill: str, settings: dict[str, Any]
           ) -> tuple[str, Any]:
    from llmcli_local.decode import generate

    chunks = list(generate(backend, _messages(text), prefill, _settings(**settings)))
    return "".join(c for c in chunks if isinstance(c, str)), chunks[-1]


def _drain(handle: Any) -> tuple[str, Any]:
    chunks = list(handle)
    return "".join(c for c in chunks if isinstance(c, str)), chunks[-1]


def _batched(backend: Any, calls: list[tuple[str, str, dict[str, Any]]], **options: Any
             ) -> tuple[list[tuple[str, Any]], Any]:
    from llmcli_local.scheduler import Scheduler

    scheduler = Scheduler(backend, **options)
    handles = [scheduler.submit(_messages(t), p, _settings(**s)) for t, p, s in calls]
    return [_drain(h) for h in handles], scheduler


@pytest.mark.parametrize("model", ["tiny", "tiny_qwen2"])
def test_greedy_text_batched_is_the_text_alone(model: str, request: pytest.FixtureRequest
                                              ) -> None:
    from tests.local.conftest import load

    directory = request.getfixturevalue("tiny_model_dir" if model == "tiny" else
                                        "tiny_qwen2_dir")
    backend = without_eos(load(directory))
    alone = [_alone(backend, *call) for call in CALLS]
    batched, scheduler = _batched(backend, CALLS)
    assert [text for text, _ in batched] == [text for text, _ in alone]
    for (_, usage), (_, single) in zip(batched, alone, strict=True):
        assert usage.output_tokens == single.output_tokens
        assert usage.stop_reason == single.stop_reason == "max_tokens"
        assert usage.input_tokens == single.input_tokens
        assert usage.details["healed"] == single.details["healed"]
        assert usage.details.get("prefill_tokens") == single.details.get("prefill_tokens")
    # They really ran together: all eight joined, and most steps took several rows.
    assert scheduler.peak_batch == len(CALLS)
    assert scheduler.batched_steps > scheduler.steps // 2
    assert max(u.details["batch"] for _, u in batched) == len(CALLS)


def test_one_call_through_the_scheduler_is_exactly_generate(tiny: Any) -> None:
    """A lone sequence steps unbatched: same text and the same usage, no batch detail."""
    from llmcli_local.scheduler import Scheduler

    backend = without_eos(tiny)
    text, usage = _alone(backend, "Hi", "def quicksor", {"max_tokens": 10})
    chunks = list(Scheduler(backend).generate(_messages("Hi"), "def quicksor",
                                              _settings(max_tokens=10)))
    assert "".join(c for c in chunks if isinstance(c, str)) == text
    got = chunks[-1]
    assert "batch" not in got.details
    assert {k: v for k, v in got.details.items() if "second" not in k} == {
        k: v for k, v in usage.details.items() if "second" not in k}


def test_each_sequence_keeps_its_stops_constraint_and_seed(tiny: Any) -> None:
    """Stops, end of turn, healing and sampling seeds, mixed in one batch."""
    free = without_eos(tiny)
    probe, _ = _alone(free, "Hi", "def quicksor", {"max_tokens": 20})
    stop = probe[5:7]  # a stop sequence this greedy continuation meets
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("Hi", "def quicksor", {"max_tokens": 20, "stop": [stop]}),
        ("Hi", "def quicksor", {"max_tokens": 20}),
        ("List", '["Cal', {"max_tokens": 12, "prefill_mode": "heal"}),
        ("Seeded", "The", {"max_tokens": 15, "temperature": 1.0, "seed": 7}),
        ("Seeded", "The", {"max_tokens": 15, "temperature": 1.0, "seed": 8, "top_k": 20}),
        ("Seeded", "The", {"max_tokens": 15, "temperature": 0.8, "seed": 7, "top_p": 0.9}),
    ]
    alone = [_alone(free, *call) for call in calls]
    batched, scheduler = _batched(free, calls)
    assert [t for t, _ in batched] == [t for t, _ in alone]
    assert scheduler.peak_batch == len(calls)
    first, usage = batched[0]
    assert usage.stop_reason == "stop_sequence" and stop not in first
    assert first == probe[: probe.index(stop)]
    # Two seeds, two texts; the same seed, the same text as alone (checked above).
    assert batched[3][0] != batched[4][0]


def test_end_of_turn_leaves_the_batch(tiny: Any, recorded_tokens: list[int]) -> None:
    """A sequence leaves when it picks its end-of-turn id; the others go on."""
    import dataclasses

    from llmcli_local.scheduler import Scheduler

    free = without_eos(tiny)
    _alone(free, "Hi", "def quicksor", {"max_tokens": 8})
    # Make its fourth token an end of turn: that sequence stops there (or earlier).
    ending = dataclasses.replace(free, eos_ids=frozenset({recorded_tokens[3]}))
    text, usage = _alone(ending, "Hi", "def quicksor", {"max_tokens": 8})
    assert usage.stop_reason == "end_turn" and usage.output_tokens <= 4
    scheduler = Scheduler(free)
    long = scheduler.submit(_messages("Say"), "", _settings(max_tokens=30))
    short = scheduler.submit(_messages("Hi"), "def quicksor", _settings(max_tokens=8),
                             backend=ending)
    assert _drain(short)[0] == text and short.stop_reason == "end_turn"
    assert _drain(long)[1].output_tokens == 30
    assert scheduler.peak_batch == 2


def test_a_sequence_joins_while_others_run_and_leaves_first(tiny: Any) -> None:
    from llmcli_local.scheduler import Scheduler

    free = without_eos(tiny)
    scheduler = Scheduler(free)
    long = scheduler.submit(_messages("Long"), "def ", _settings(max_tokens=400))
    first = next(long)  # it is running
    assert isinstance(first, str)
    short = scheduler.submit(_messages("Short"), "The", _settings(max_tokens=5))
    text, usage = _drain(short)
    assert usage.output_tokens == 5 and usage.details["batch"] == 2
    assert not long.done  # it joined a running batch and left before it
    assert text == _alone(free, "Short", "The", {"max_tokens": 5})[0]
    rest, usage = _drain(long)
    assert first + rest == _alone(free, "Long", "def ", {"max_tokens": 400})[0]
    assert usage.output_tokens == 400 and scheduler.reserved == 0
    # Once idle, the worker thread is gone; a new call starts another.
    _wait(lambda: scheduler._thread is None, "the worker thread to end")
    assert _drain(scheduler.submit(_messages("Again"), "", _settings(max_tokens=3)))[
        1].output_tokens == 3


def _wait(condition: Any, what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_cancel_a_running_sequence(tiny: Any) -> None:
    from llmcli_local.scheduler import CANCELLED, Scheduler

    free = without_eos(tiny)
    scheduler = Scheduler(free)
    doomed = scheduler.submit(_messages("Long"), "def ", _settings(max_tokens=1500))
    other = scheduler.submit(_messages("Other"), "The", _settings(max_tokens=40))
    assert isinstance(next(doomed), str)
    doomed.cancel()
    assert doomed.wait(10)
    leftover = list(doomed)  # what was produced before the cancel, then the end
    assert all(isinstance(c, str) for c in leftover)
    assert doomed.stop_reason == CANCELLED and doomed.usage is None
    # The other sequence is untouched, and the cancelled one's cache budget is returned.
    assert _drain(other)[0] == _alone(free, "Other", "The", {"max_tokens": 40})[0]
    _wait(lambda: scheduler.reserved == 0, "the budget to be returned")


def test_closing_the_generator_cancels(tiny: Any) -> None:
    from llmcli_local.scheduler import Scheduler

    scheduler = Scheduler(without_eos(tiny))
    chunks = scheduler.generate(_messages("Long"), "def ", _settings(max_tokens=1500))
    assert isinstance(next(chunks), str)
    chunks.close()  # Ctrl-C, or a client gone
    _wait(lambda: scheduler._thread is None, "the cancelled sequence to leave")
    assert scheduler.reserved == 0 and scheduler.waiting == 0


def test_a_waiting_sequence_cancelled_never_runs(tiny: Any, recorded_tokens: list[int]
                                                 ) -> None:
    from llmcli_local.scheduler import CANCELLED, Scheduler

    scheduler = Scheduler(without_eos(tiny), max_batch=1)
    running = scheduler.submit(_messages("A"), "def ",
                               _settings(max_tokens=60, prefill_mode="none"))
    waiting = scheduler.submit(_messages("B"), "The", _settings(max_tokens=60))
    waiting.cancel()
    assert _drain(running)[1].output_tokens == 60
    assert waiting.wait(10) and waiting.stop_reason == CANCELLED
    assert list(waiting) == []
    assert len(recorded_tokens) == 60  # only the first sequence ever picked a token


def test_back_pressure_max_batch(tiny: Any) -> None:
    """Twelve calls, at most three at once: the rest wait their turn, none fails."""
    free = without_eos(tiny)
    calls = [(f"Call {i}", "def ", {"max_tokens": 5 + i}) for i in range(12)]
    batched, scheduler = _batched(free, calls, max_batch=3)
    assert scheduler.peak_batch == 3
    assert [t for t, _ in batched] == [_alone(free, *c)[0] for c in calls]


def test_back_pressure_kv_budget(tiny: Any) -> None:
    """A budget that fits two sequences' caches: never more than two run, and their
    caches together stay within it; a sequence larger than the budget still runs, alone."""
    from llmcli_local.decode import prepare

    free = without_eos(tiny)
    calls = [(f"Call {i}", "def ", {"max_tokens": 30}) for i in range(5)]
    need = prepare(free, _messages("Call 0"), "def ", _settings(max_tokens=30)).capacity
    batched, scheduler = _batched(free, calls, kv_budget=2 * need + need // 2)
    assert scheduler.peak_batch == 2
    assert scheduler.peak_reserved <= 2 * need + need // 2
    assert all(u.output_tokens == 30 for _, u in batched)
    big, small = _batched(free, [("Big", "", {"max_tokens": 200})], kv_budget=10)
    assert big[0][1].output_tokens == 200 and small.peak_batch == 1


def test_concurrent_submission_from_many_threads(tiny: Any) -> None:
    from llmcli_local.scheduler import Scheduler

    free = without_eos(tiny)
    scheduler = Scheduler(free)
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(CALLS))

    def call(i: int) -> None:
        text, prefill, settings = CALLS[i]
        barrier.wait()
        results[i] = _drain(scheduler.submit(_messages(text), prefill, _settings(**settings)))[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(CALLS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [results[i] for i in range(len(CALLS))] == [_alone(free, *c)[0] for c in CALLS]
    assert scheduler.peak_batch >= 2


def test_errors_reach_their_caller_only(tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from llmcli_local.scheduler import Scheduler

    free = without_eos(tiny)
    scheduler = Scheduler(free)
    # A prompt the model cannot take fails in submit, in the caller's thread.
    with pytest.raises(ConfigError, match="context"):
        scheduler.submit(_messages("x " * 3000), "", _settings())
    # A prompt pass that fails fails its own handle; the others carry on.
    good = scheduler.submit(_messages("Good"), "def ", _settings(max_tokens=20))

    def failing(ids: Any, capacity: int) -> Any:
        raise RuntimeError("out of memory")

    bad_backend = dataclasses.replace(free)
    monkeypatch.setattr(bad_backend, "prompt", failing, raising=False)
    bad = scheduler.submit(_messages("Bad"), "", _settings(max_tokens=5, prefill_mode="none"),
                           backend=bad_backend)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(bad)
    assert bad.stop_reason == "error"
    assert _drain(good)[1].output_tokens == 20


def test_transformers_backend_runs_one_at_a_time(tiny_hf: Any) -> None:
    """No batched step on transformers: the scheduler queues its sequences, one running."""
    free = without_eos(tiny_hf)
    calls = CALLS[:3]
    batched, scheduler = _batched(free, calls)
    assert scheduler.max_batch == 1 and scheduler.peak_batch == 1
    assert [t for t, _ in batched] == [_alone(free, *c)[0] for c in calls]


def test_shared_scheduler_is_per_loaded_model(tiny: Any, tiny_hf: Any) -> None:
    import dataclasses

    from llmcli_local.scheduler import shared

    assert shared(tiny) is shared(dataclasses.replace(tiny, eos_ids=frozenset()))
    assert shared(tiny) is not shared(tiny_hf)
    assert shared(tiny_hf) is shared(tiny_hf.configured("static", False))


def test_local_model_calls_from_threads_are_batched(tiny_model_dir: Any, load_plugins: Any
                                                    ) -> None:
    """``llmcli batch`` and ``llmcli serve`` call the model from several threads: the
    in-process path submits to the model's shared scheduler, so they are batched."""
    from llmcli_local import loader, scheduler
    from llmcli_local.model import LocalModel
    from llmcli_local.sources import ModelSource

    load_plugins("llmcli-local")
    model = LocalModel("tiny-test", ModelSource("hf", tiny_model_dir))
    assert model.batch_concurrency == scheduler.DEFAULT_MAX_BATCH == 8
    with pytest.MonkeyPatch.context() as env:
        # serve and batch follow the scheduler's own limit.
        env.setenv("LLMCLI_LOCAL_MAX_BATCH", "3")
        assert model.batch_concurrency == 3 == RuntimeConfig.build().max_batch
    expected = model.prompt("Hi", prefill="def ", max_tokens=30, log=False).text()
    backend = next(b for k, b in loader.loaded_models().items() if k[0] == str(tiny_model_dir))
    texts: list[str] = []
    seen: list[int] = []

    def call() -> None:
        response = model.prompt("Hi", prefill="def ", max_tokens=30, log=False)
        texts.append(response.text())
        seen.append(int(response.usage().details.get("batch", 1)))

    held = scheduler.shared(backend)  # hold it, so that every call shares this one
    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert texts == [expected] * 4
    assert held.peak_batch >= 2 and max(seen) >= 2


@pytest.mark.slow
def test_smollm2_greedy_text_batched_is_the_text_alone(smollm2: Any) -> None:
    """The real model, eight calls at once (end of turn kept: they leave at different
    steps): each text is the one it gets alone."""
    from llmcli_local import loader

    backend = loader.load(smollm2.source(), configured(device="cpu"))
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("Name three US states.", "1.", {"max_tokens": 40}),
        ("Give a JSON array of 5 fruits. Reply with the JSON only.", '["', {"max_tokens": 40}),
        ("What is the URL of the Python website?", "The URL is http:", {"max_tokens": 30}),
        ("Write a haiku about rain.", "", {"max_tokens": 40}),
        ("List three US states.", '["Cal', {"max_tokens": 30, "prefill_mode": "heal"}),
        ("Why is the sky blue?", "Because", {"max_tokens": 48, "stop": ["."]}),
        ("Translate 'good morning' into French.", "", {"max_tokens": 20}),
        ("Write a Python function that adds two numbers.", "def ", {"max_tokens": 40}),
    ]
    alone = [_alone(backend, *call) for call in calls]
    batched, scheduler = _batched(backend, calls)
    assert scheduler.peak_batch == len(calls)
    assert [t for t, _ in batched] == [t for t, _ in alone]
    assert [u.stop_reason for _, u in batched] == [u.stop_reason for _, u in alone]


def test_a_process_exits_cleanly_with_sequences_still_running(tiny_model_dir: Any) -> None:
    """Exiting while the worker thread is in a forward pass must not abort the process
    (a daemon thread stopped inside a torch kernel does): the exit hook cancels and waits."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.path.insert(0, '.')\n"
        "from pathlib import Path\n"
        "from tests.local.conftest import load, without_eos\n"
        "from llmcli_local.scheduler import Scheduler\n"
        "from llmcli_local.decode import GenerationSettings\n"
        f"backend = without_eos(load(Path({str(tiny_model_dir)!r})))\n"
        "s = Scheduler(backend)\n"
        "done = [s.submit([{'role': 'user', 'content': f'Hi {i}'}], '', "
        "GenerationSettings(max_tokens=3)) for i in range(4)]\n"
        "left = [s.submit([{'role': 'user', 'content': 'Long'}], '', "
        "GenerationSettings(max_tokens=1500)) for _ in range(4)]\n"
        "print(''.join(h.text() for h in done) != '', next(left[0]) != '')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True True"
    assert "terminate called" not in result.stderr

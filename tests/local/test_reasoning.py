"""Thinking models on the local runtime (#28): the ``<think>`` block split out of the
answer, and a prefill placed after the thinking (``after``) or after an empty, closed
block (``skip``), on a tiny random Qwen3 (q/k norms) with a Qwen3-style thinking template
made here: no weights are downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from llmcli_local import thinking
from llmcli_local.thinking import ThinkingTemplate, ThinkSplitter

from llmcli.capabilities import ReasoningPrefill
from llmcli.errors import OptionsError
from llmcli.models import Reasoning, Usage
from tests.local.conftest import THINKING_TEMPLATE

#: DeepSeek-R1's style: the generation prompt itself opens the block.
OPENING_TEMPLATE = THINKING_TEMPLATE.replace(
    "{{ '<|im_start|>assistant\n' }}", "{{ '<|im_start|>assistant\n<think>\n' }}")
assert OPENING_TEMPLATE != THINKING_TEMPLATE
PREFILL = '["'


# -- pure: the split, the prefills, the templates ------------------------------------------


def split(chunks: list[str], opened: bool = False) -> tuple[str, str, list[Any]]:
    splitter = ThinkSplitter(opened=opened)
    events = [e for c in chunks for e in splitter.feed(c)] + list(splitter.finish())
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    answer = "".join(e for e in events if isinstance(e, str))
    return reasoning, answer, events


REPLY = "<think>\nFirst this, then that.\n</think>\n\nThe answer: 42."


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 100])
def test_the_think_block_is_split_out_however_the_stream_is_cut(size: int) -> None:
    chunks = [REPLY[i:i + size] for i in range(0, len(REPLY), size)]
    reasoning, answer, events = split(chunks)
    assert reasoning == "First this, then that."
    assert answer == "The answer: 42."
    first_text = min(i for i, e in enumerate(events) if isinstance(e, str))
    assert all(isinstance(e, Reasoning) for e in events[:first_text])


def test_split_edge_cases() -> None:
    # No block: the reply is all answer, a '<' that is not the tag included.
    assert split(["<b>bold</b>"])[:2] == ("", "<b>bold</b>")
    assert split(["<thi"])[:2] == ("", "<thi")
    # A block the prompt opened (R1 style); one never closed (a budget reached) is all
    # reasoning.
    assert split(["Hmm.\n</think>\n\nYes."], opened=True)[:2] == ("Hmm.", "Yes.")
    assert split(["Hmm, still thinking"], opened=True)[:2] == ("Hmm, still thinking", "")
    # A tag in the middle of an answer is the answer's.
    assert split(["Use <think> tags"])[:2] == ("", "Use <think> tags")


def test_the_prefills_of_after_and_skip() -> None:
    qwen3, r1 = ThinkingTemplate(thinks=True), ThinkingTemplate(thinks=True, opens=True)
    # skip is exactly what Qwen3's template renders for enable_thinking=False.
    assert thinking.skip_prefill(qwen3, PREFILL) == "<think>\n\n</think>\n\n" + PREFILL
    assert thinking.skip_prefill(r1, PREFILL) == "\n</think>\n\n" + PREFILL
    assert thinking.after_prefill(qwen3, "Hmm.\n", PREFILL) == (
        "<think>\nHmm.\n</think>\n\n" + PREFILL)
    # Thinking cut mid-line is closed on a line of its own.
    assert thinking.after_prefill(r1, "Hmm", PREFILL) == "Hmm\n</think>\n\n" + PREFILL


def write_template(directory: Path, template: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "chat_template.jinja").write_text(template)
    (directory / "tokenizer_config.json").write_text("{}")
    return directory


def test_which_templates_think(tmp_path: Path) -> None:
    from tests.local.conftest import CHATML

    assert thinking.template_of(write_template(tmp_path / "a", CHATML)) == ThinkingTemplate(
        thinks=False)
    assert thinking.template_of(write_template(tmp_path / "b", THINKING_TEMPLATE)) == (
        ThinkingTemplate(thinks=True, opens=False))
    assert thinking.template_of(write_template(tmp_path / "c", OPENING_TEMPLATE)) == (
        ThinkingTemplate(thinks=True, opens=True))
    assert thinking.template_of(tmp_path / "missing") is None


# -- a tiny Qwen3 that thinks ----------------------------------------------------------------

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def thinking_qwen3_dir(thinking_model_dir: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Qwen3 (q/k norms) with the tiny tokenizer's <think> tokens and a
    Qwen3-style thinking template."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    directory = tmp_path_factory.mktemp("tiny-qwen3-thinking")
    tokenizer = AutoTokenizer.from_pretrained(str(thinking_model_dir))
    tokenizer.chat_template = THINKING_TEMPLATE
    tokenizer.save_pretrained(directory)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(3)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                norm.weight.normal_(1, 0.5)
    model.save_pretrained(directory)
    return directory


@pytest.fixture
def qwen3(thinking_qwen3_dir: Path) -> Any:
    from llmcli_local.lean.config import why_not
    from llmcli_local.model import LocalModel
    from llmcli_local.sources import ModelSource

    assert why_not(thinking_qwen3_dir) is None  # the lean backend runs it
    return LocalModel("tiny-qwen3-thinking", ModelSource("hf", thinking_qwen3_dir))


@pytest.fixture
def generations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[str, ...]]]:
    """Each generation a call runs: its prefill text and its stop sequences."""
    from llmcli_local import model

    seen: list[tuple[str, tuple[str, ...]]] = []
    original = model._Runner.generate

    def recording(self: Any, messages: Any, prefill: str, settings: Any) -> Any:
        seen.append((prefill, settings.stop))
        return original(self, messages, prefill, settings)

    monkeypatch.setattr(model._Runner, "generate", recording)
    return seen


def events_of(model: Any, **kwargs: Any) -> list[Any]:
    kwargs = {"max_tokens": 12, "temperature": 1.0, "seed": 5, **kwargs}
    response = model.prompt("Name a state.", log=False, **kwargs)
    return list(model.execute(response.request))


def test_after_thinks_first_then_the_answer_begins_with_the_prefill(
        qwen3: Any, generations: list[Any]) -> None:
    assert qwen3.reasoning_prefills() == {ReasoningPrefill.AFTER: "native",
                                          ReasoningPrefill.SKIP: "native"}
    events = events_of(qwen3, prefill=PREFILL, reasoning_prefill="after")
    # Two generations: thinking (opened by us, stopped at its close), then the prefill
    # continued after the closed thinking.
    (opening, stop), (after, _) = generations
    assert (opening, stop) == ("<think>\n", ("</think>",))
    thought = "".join(e.text for e in events if isinstance(e, Reasoning))
    assert thought.strip()
    assert after.startswith("<think>\n") and after.endswith("\n</think>\n\n" + PREFILL)
    assert thought in after
    kinds = [type(e) for e in events if not isinstance(e, str) or e]
    assert kinds.index(str) > max(i for i, k in enumerate(kinds) if k is Reasoning)
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.details["reasoning_prefill"] == "after"
    assert usage.details["reasoning_tokens"] > 0
    # The default for a prefill on a thinking template; the answer begins with the prefill
    # and the reasoning is not part of it.
    response = qwen3.prompt("Name a state.", prefill=PREFILL, log=False, max_tokens=12,
                            temperature=1.0, seed=5)
    text = response.text()
    assert text.startswith(PREFILL) and "</think>" not in text and thought not in text
    # The answer is an ordinary prefilled call's from prompt + thinking + prefill: the
    # same text as a call given that whole prefill (a prefill that writes the block itself
    # is taken as it is).
    continuation = "".join(e for e in events if isinstance(e, str))
    direct = qwen3.prompt("Name a state.", prefill=after, log=False, max_tokens=12,
                          temperature=1.0, seed=5)
    assert direct.continuation == continuation
    assert text == PREFILL + continuation


def test_skip_is_qwen3s_no_think(qwen3: Any, generations: list[Any]) -> None:
    events = events_of(qwen3, prefill=PREFILL, reasoning_prefill="skip")
    assert generations == [("<think>\n\n</think>\n\n" + PREFILL, ())]
    assert not any(isinstance(e, Reasoning) for e in events)
    # The same prompt as the template's own switch renders: the same reply.
    switched = qwen3.prompt("Name a state.", prefill=PREFILL, enable_thinking=False,
                            log=False, max_tokens=12, temperature=1.0, seed=5)
    assert "".join(e for e in events if isinstance(e, str)) == switched.continuation


def test_without_a_prefill_the_reply_is_split(qwen3: Any, generations: list[Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcli_local import model

    # A scripted reply through the real plan (a random model does not write the tags).
    def scripted(self: Any, messages: Any, prefill: str, settings: Any) -> Any:
        yield from ["<thi", "nk>\nWhich one", "? Texas.\n</th", "ink>\n\nTexas"]
        yield Usage(output_tokens=9)

    monkeypatch.setattr(model._Runner, "generate", scripted)
    events = events_of(qwen3)
    assert [e.text for e in events if isinstance(e, Reasoning)] == ["Which one", "? Texas."]
    assert "".join(e for e in events if isinstance(e, str)) == "Texas"
    # After a prefill the reply is the answer's continuation: a tag in it is text.
    events = events_of(qwen3, prefill="Tags: ", reasoning_prefill="skip")
    assert not any(isinstance(e, Reasoning) for e in events)


def test_a_model_whose_template_does_not_think(tiny_model_dir: Path) -> None:
    from llmcli_local.model import LocalModel
    from llmcli_local.sources import ModelSource

    plain = LocalModel("tiny", ModelSource("hf", tiny_model_dir))
    events = events_of(plain, prefill=PREFILL, reasoning_prefill="after")
    assert not any(isinstance(e, Reasoning) for e in events)
    with pytest.raises(OptionsError, match="emulate is not supported .*takes: after, skip"):
        plain.prompt("q", prefill=PREFILL, reasoning_prefill="emulate", log=False)

"""Character-level prefill (``prefill_mode chars``, the default) against a brute-force
reference on the tiny model: the exact distribution of the first character past the prefill,
summed over every canonical tokenization of the prefill and what follows it."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch
from llmcli_local import boundary, decode
from llmcli_local.decode import GenerationSettings

MESSAGES = [{"role": "user", "content": "List states"}]
#: Short prefills the brute force can enumerate: mid-word, a URL scheme, trailing spaces,
#: JSON, an identifier, punctuation.
PREFILLS = ['["Ca', "http:", "x  ", "qui", "The UR", "A JSON list: [", "def quicks", "is a "]


def _canonical(backend: Any, ids: list[int]) -> bool:
    data = b"".join(backend.vocab.bytes_of(t) for t in ids)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return bool(backend.encode(text) == ids)


def _prefix_canonical(backend: Any, ids: list[int]) -> bool:
    """Whether ``ids`` can start a canonical sequence: canonical itself, or but for a run of
    whitespace tokens at its end (the pre-tokenizer's ``\\s+(?!\\S)`` splits a run of
    spaces by what follows it)."""
    if _canonical(backend, ids):
        return True
    head = list(ids)
    while head and backend.vocab.bytes_of(head[-1]).isspace():
        head.pop()
    return len(head) < len(ids) and _canonical(backend, head)


def _logp(backend: Any, ids: list[int]) -> torch.Tensor:
    logits, _ = backend.prompt(ids, len(ids) + 1)
    return torch.log_softmax(logits.float(), dim=-1)


def reference(backend: Any, prefill: str) -> dict[int, float]:
    return _reference(backend, prefill)[0]


def _reference(backend: Any, prefill: str) -> tuple[dict[int, float], bytes | None]:
    """P(first byte past the prefill | the reply starts with the prefill), by enumerating
    every token sequence after the template that spells the prefill, keeping those the
    tokenizer itself would write (canonical), each scored by its own forward pass."""
    template = backend.render(MESSAGES)
    head = backend.encode(template)
    data = prefill.encode("utf-8")
    vocab = backend.vocab
    mass: dict[int, list[float]] = {}
    best: tuple[float, bytes | None] = (-math.inf, b"")

    def found(char: int, score: float, extra: bytes | None) -> None:
        nonlocal best
        mass.setdefault(char, []).append(score)
        if score > best[0]:
            best = (score, extra)

    stack: list[tuple[list[int], float]] = [([], 0.0)]
    while stack:
        seq, lp = stack.pop()
        covered = sum(len(vocab.bytes_of(t)) for t in seq)
        rest = data[covered:]
        row = _logp(backend, head + seq)
        for token in range(len(vocab)):
            piece = vocab.token_bytes[token]
            if not piece or token in vocab.atomic:
                continue
            score = lp + float(row[token])
            if piece.startswith(rest) and len(piece) > len(rest):
                if _canonical(backend, [*seq, token]):
                    found(piece[len(rest)], score, piece[len(rest):])
            elif rest.startswith(piece) and _prefix_canonical(backend, [*seq, token]):
                if len(piece) < len(rest):
                    stack.append(([*seq, token], score))
                    continue
                after = _logp(backend, [*head, *seq, token])  # exact end: any next token
                for nxt in range(len(vocab)):
                    nxt_piece = vocab.token_bytes[nxt]
                    if nxt in backend.eos_ids:
                        found(boundary.END, score + float(after[nxt]), None)
                    elif nxt_piece and _canonical(backend, [*seq, token, nxt]):
                        found(nxt_piece[0], score + float(after[nxt]), nxt_piece)
    totals = {char: float(torch.logsumexp(torch.tensor(v), 0)) for char, v in mass.items()}
    norm = float(torch.logsumexp(torch.tensor(list(totals.values())), 0))
    return {char: math.exp(v - norm) for char, v in totals.items()}, best[1]


def _plan(backend: Any, prefill: str) -> tuple[boundary.Plan, torch.Tensor]:
    template = backend.render(MESSAGES)
    plan = boundary.plan(backend, backend.encode(template), template, prefill)
    logp, cache, _ = boundary._scores(backend, plan, len(plan.body) + len(plan.tokens) + 8)
    return plan, logp


@pytest.mark.parametrize("prefill", PREFILLS)
def test_next_character_distribution_is_the_brute_force_one(tiny_any: Any,
                                                            prefill: str) -> None:
    expected = reference(tiny_any, prefill)
    plan, logp = _plan(tiny_any, prefill)
    got = boundary.next_chars(tiny_any, plan, logp)
    # Covers too unlikely to matter are not weighed: only negligible characters go missing.
    assert set(got) <= set(expected)
    for char, probability in expected.items():
        assert got.get(char, 0.0) == pytest.approx(probability, abs=2e-4), (prefill, char)


@pytest.mark.parametrize("prefill", PREFILLS)
def test_greedy_takes_the_likeliest_cover(tiny: Any, prefill: str) -> None:
    """Greedy's first token is the brute force's likeliest canonical way to write the
    prefill and go on (its bytes past the prefill; None: the reply ends there)."""
    _, extra = _reference(tiny, prefill)
    out = list(decode.generate(tiny, MESSAGES, prefill, GenerationSettings(max_tokens=1)))
    text = "".join(out[:-1]).encode("utf-8")
    if extra is None:
        assert text == b"" and out[-1].stop_reason == "end_turn"
    else:
        assert text == extra


def _chi_square_critical(df: int) -> float:
    """The chi-square statistic exceeded with probability 0.001 (Wilson-Hilferty)."""
    z = 3.0902
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("prefill", ['["Ca', "x  ", "is a "])
def test_sampling_draws_the_exact_next_character_distribution(tiny: Any, prefill: str) -> None:
    expected = reference(tiny, prefill)
    plan, logp = _plan(tiny, prefill)
    generator = torch.Generator().manual_seed(1234)
    draws = 3000
    counts: Counter[int] = Counter()
    for _ in range(draws):
        choice = boundary.choose(tiny, plan, logp, temperature=1.0, generator=generator)
        piece = tiny.vocab.bytes_of(choice.first)
        if choice.pending:
            counts[piece[len(choice.pending)]] += 1
        else:
            counts[piece[0] if piece else boundary.END] += 1
    # Categories expected at least 5 times each; the rest pooled.
    big = [c for c, p in expected.items() if p * draws >= 5]
    observed = [counts[c] for c in big] + [draws - sum(counts[c] for c in big)]
    wanted = [expected[c] * draws for c in big] + [draws * (1 - sum(expected[c] for c in big))]
    if wanted[-1] < 5:
        observed[-2] += observed.pop()
        wanted[-2] += wanted.pop()
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, wanted, strict=True))
    assert statistic < _chi_square_critical(len(observed) - 1), (counts, expected)
    assert set(counts) <= set(expected)  # never a character the reference rules out


@pytest.mark.parametrize("prefill", [*PREFILLS, "The URL is http://www.exa", "Héllo wörld, naï",
                                     "<|im_end|> typed", "   ", "a\n\n"])
def test_the_body_is_the_tokenizers_own_split(tiny: Any, prefill: str) -> None:
    template = tiny.render(MESSAGES)
    head = tiny.encode(template)
    plan = boundary.plan(tiny, head, template, prefill)
    data = prefill.encode("utf-8")
    assert plan.body[:len(head)] == head
    body = plan.body[len(head):]
    spelled = b"".join(tiny.vocab.bytes_of(t) for t in body)
    assert spelled + plan.region == data
    # The tokenizer's own split of the prefill (special-token names read as text).
    own = boundary._encoder(tiny).encode(prefill)
    assert own[:len(body)] == body and own[len(body):] == plan.canon
    assert 1 <= len(plan.canon) <= boundary.MAX_REGION_TOKENS


def test_a_long_prefill_costs_one_pass_and_the_tokenizers_token_count(tiny: Any) -> None:
    prose = ("California, Colorado, Connecticut are states. Call me. This is a test. " * 40)
    out = list(decode.generate(tiny, MESSAGES, prose + "Cal",
                               GenerationSettings(max_tokens=1)))
    details = out[-1].details
    own = len(tiny.encode(prose + "Cal"))
    assert details["prefill_mode"] == "chars"
    assert details["forward_passes"] == 1
    assert abs(details["prefill_tokens"] - own) <= own * 0.02 + 3


def test_the_kept_path_steps_as_a_fresh_prompt_would(tiny: Any) -> None:
    """The cache after the tree pass (the chosen path moved into place) gives the logits a
    plain pass over the same ids gives."""
    template = tiny.render(MESSAGES)
    plan = boundary.plan(tiny, tiny.encode(template), template, "def quicks")
    assert len(plan.tokens) > 2  # several paths, so the kept one moves
    for node in range(len(plan.tokens)):
        scores, cache = tiny.prompt_tree(plan.body, plan.tokens, plan.parents,
                                         len(plan.body) + len(plan.tokens) + 4)
        path = plan.path(node)
        tiny.keep_path(cache, len(plan.body), path)
        ids = [*plan.body, *(plan.tokens[n] for n in path)]
        assert cache.ids == ids and cache.position == len(ids)
        after = tiny.step(cache, 5)
        fresh, fresh_cache = tiny.prompt(ids, len(ids) + 2)
        torch.testing.assert_close(scores.full(node + 1), fresh, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(after, tiny.step(fresh_cache, 5), atol=1e-4, rtol=1e-4)


def test_a_grammar_chooses_among_canonical_covers_it_allows(tiny: Any) -> None:
    from llmcli_local import grammar

    schema = {"type": "array", "items": {"type": "string", "enum": ["California", "Texas"]}}
    settings = GenerationSettings(max_tokens=30, grammar=grammar.from_schema(schema))
    out = list(decode.generate(tiny, MESSAGES, '["Ca', settings))
    text = '["Ca' + "".join(out[:-1])
    assert text.startswith('["California"')
    assert out[-1].details["prefill_mode"] == "chars"


def test_forced_keeps_exact_as_its_old_name() -> None:
    from llmcli_local.options import LocalOptions

    assert LocalOptions().prefill_mode == "chars"
    assert LocalOptions(prefill_mode="exact").prefill_mode == "forced"
    assert GenerationSettings(prefill_mode="exact").prefill_mode == "forced"  # type: ignore[arg-type]


def test_an_added_token_is_never_part_of_the_region(thinking_model_dir: Any) -> None:
    """``<think>`` is an added token: text after it never merges with it, so the region
    starts after it, and a prefill that ends with one has nothing to weigh."""
    from tests.local.conftest import load

    backend = load(thinking_model_dir)
    think = backend.encode("<think>")
    assert len(think) == 1 and think[0] in backend.vocab.atomic
    template = backend.render(MESSAGES)
    head = backend.encode(template)
    ends = boundary.plan(backend, head, template, "<think>")
    assert ends.region == b"" and ends.body == [*head, *think]
    after = boundary.plan(backend, head, template, "<think>\n")
    assert after.region == b"\n" and after.body == [*head, *think]
    for prefill in ("<think>", "<think>\n"):
        out = list(decode.generate(backend, MESSAGES, prefill, GenerationSettings(max_tokens=3)))
        assert out[-1].details["prefill_mode"] == "chars" and out[-1].output_tokens == 3

"""Structured output on SmolLM2 (constrained decoding, llmcli_local.grammar): how many replies
are valid and schema-conformant with no prefill, a prefill only, and a schema; what the mask
costs next to a decode step; how many forward passes a schema with long fixed keys takes.

    python tests/bench/bench_schema.py [--prompts 20] [--max-tokens 64] [--threads N]
                                       [--no-table] [--no-overhead] [--no-forced]
                                       [--engines]

Table: the JSON-list prompt set ('Give a JSON array of 5 X. Reply with the JSON only.'),
greedy, in four conditions: plain, prefill '["', the list schema (an array of exactly 5
names) with the same prefill, and the schema alone. Overhead: median time of one mask (llguidance's
bitmask, unpacked and applied) and of one decode step, over the schema runs. Forced: a schema
with long fixed keys, output tokens against forward passes (forced runs batched), and the
same with batching off. --engines: llguidance against xgrammar (if importable) on this CPU:
tokenizer set-up, compile per schema, mask per step. Not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

THINGS = ["fruits", "US states", "colors", "animals", "countries", "programming languages",
          "vegetables", "car brands", "planets", "musical instruments", "sports", "rivers",
          "cities in Europe", "flowers", "dog breeds", "metals", "board games", "birds",
          "languages spoken in Asia", "kitchen utensils"]
PROMPT = "Give a JSON array of 5 {}. Reply with the JSON only."
#: Five names: bounded, and in name characters, so that a small model cannot run on inside a
#: string (SmolLM2 otherwise writes '["{{US}}: [USA, Canada, ...' into the first one).
LIST_SCHEMA = {"type": "array", "minItems": 5, "maxItems": 5,
               "items": {"type": "string", "minLength": 1, "maxLength": 40,
                         "pattern": "^[A-Za-z][A-Za-z .'()-]*$"}}
LONG_KEYS = {
    "type": "object",
    "properties": {
        "the_name_of_the_fruit_described_here": {"type": "string", "maxLength": 20},
        "the_usual_colour_of_its_skin_when_ripe": {"enum": ["red", "green", "yellow",
                                                             "orange", "purple"]},
        "whether_it_is_commonly_eaten_raw": {"type": "boolean"},
    },
    "required": ["the_name_of_the_fruit_described_here",
                 "the_usual_colour_of_its_skin_when_ripe", "whether_it_is_commonly_eaten_raw"],
}


def _load() -> Any:
    from llmcli_local import loader
    from llmcli_local.config import RuntimeConfig
    from llmcli_local.model import SmolLM2

    return loader.load(SmolLM2().source(), RuntimeConfig.build().replace(device="cpu"))


def _run(backend: Any, prompt: str, prefill: str, schema: dict[str, Any] | None,
         max_tokens: int) -> tuple[str, Any, float]:
    from llmcli_local import decode, grammar

    settings = decode.GenerationSettings(
        max_tokens=max_tokens, grammar=grammar.from_schema(schema) if schema else None)
    started = time.perf_counter()
    chunks = list(decode.generate(backend, [{"role": "user", "content": prompt}], prefill,
                                  settings))
    seconds = time.perf_counter() - started
    return prefill + "".join(c for c in chunks if isinstance(c, str)), chunks[-1], seconds


def _verdict(text: str) -> tuple[bool, bool]:
    """(valid JSON, conforms to the list schema), as ``response.json()`` reads a reply: the
    whole reply is one JSON value, a code fence around it tolerated."""
    from llmcli import schema as schemas

    try:
        value = schemas.parse_reply(text)
    except schemas.SchemaValidationError:
        return False, False
    return True, schemas.validation_error(LIST_SCHEMA, value) is None


CONDITIONS = [("no prefill", "", None), ("prefill only", '["', None),
              ("schema + prefill", '["', LIST_SCHEMA), ("schema only", "", LIST_SCHEMA)]


def table(backend: Any, prompts: int, max_tokens: int, only: str | None = None) -> None:
    conditions = [c for c in CONDITIONS if only is None or c[0] in only.split(",")]
    print(f"JSON-list prompt set, {prompts} prompts, greedy, max_tokens {max_tokens}:")
    print("| condition | valid JSON | schema-conformant | tokens | forward passes | seconds |")
    print("|---|---|---|---|---|---|")
    for name, prefill, schema in conditions:
        valid = conforming = tokens = passes = 0
        seconds = 0.0
        for thing in THINGS[:prompts]:
            text, usage, took = _run(backend, PROMPT.format(thing), prefill, schema, max_tokens)
            ok, conforms = _verdict(text)
            valid += ok
            conforming += conforms
            tokens += usage.output_tokens
            passes += usage.details["forward_passes"]
            seconds += took
            if not conforms and (schema is not None or thing == THINGS[0]):
                print(f"  not conforming: {thing}: {text[:160]!r}")
        print(f"| {name} | {valid}/{prompts} | {conforming}/{prompts} | {tokens} | {passes} "
              f"| {seconds:.1f} |")


def overhead(backend: Any, prompts: int, max_tokens: int) -> None:
    """Median mask time (computed and applied) and decode step time, timed in the loop."""
    from llmcli_local import decode, grammar

    masks: list[float] = []
    steps: list[float] = []
    apply = grammar.Constraint.apply
    step = type(backend).step

    def timed_apply(self: Any, logits: Any) -> Any:
        started = time.perf_counter()
        out = apply(self, logits)
        masks.append(time.perf_counter() - started)
        return out

    def timed_step(self: Any, cache: Any, token: int) -> Any:
        started = time.perf_counter()
        out = step(self, cache, token)
        steps.append(time.perf_counter() - started)
        return out

    grammar.Constraint.apply = timed_apply  # type: ignore[method-assign]
    type(backend).step = timed_step
    try:
        for thing in THINGS[:prompts]:
            _run(backend, PROMPT.format(thing), '["', LIST_SCHEMA, max_tokens)
    finally:
        grammar.Constraint.apply = apply  # type: ignore[method-assign]
        type(backend).step = step
    del decode
    mask, one_step = statistics.median(masks), statistics.median(steps)
    print(f"Mask overhead: median mask {mask * 1e3:.3f} ms ({len(masks)} masks), median "
          f"decode step {one_step * 1e3:.1f} ms ({len(steps)} steps): "
          f"{100 * mask / one_step:.2f}% of a step")


def forced(backend: Any, max_tokens: int) -> None:
    from llmcli_local import decode

    from llmcli import schema as schemas

    prompt = "Describe an apple as JSON."
    text, usage, took = _run(backend, prompt, "", LONG_KEYS, max_tokens)
    schemas.check_reply(LONG_KEYS, text)
    print(f"Long fixed keys: {usage.output_tokens} tokens in "
          f"{usage.details['forward_passes']} forward passes "
          f"({usage.details['forced_tokens']} forced), {took:.1f} s: {text}")
    original = decode.Decoding.forced
    decode.Decoding.forced = lambda self: []  # type: ignore[method-assign]
    try:
        text, usage, took = _run(backend, prompt, "", LONG_KEYS, max_tokens)
    finally:
        decode.Decoding.forced = original  # type: ignore[method-assign]
    print(f"  batching off: {usage.output_tokens} tokens in "
          f"{usage.details['forward_passes']} forward passes, {took:.1f} s")


def engines(backend: Any) -> None:
    import torch
    from llmcli_local import grammar

    schema = {**LONG_KEYS, "properties": {**LONG_KEYS["properties"],
                                          "tags": {"type": "array", "items": {"type": "string"}},
                                          "weight_grams": {"type": "integer"}}}
    text = ('{"the_name_of_the_fruit_described_here": "Granny Smith", '
            '"the_usual_colour_of_its_skin_when_ripe": "green", '
            '"whether_it_is_commonly_eaten_raw": true, "tags": ["tart", "crisp"], '
            '"weight_grams": 180}')
    tokens = backend.encode(text)
    vocab = len(backend.vocab)
    started = time.perf_counter()
    grammar._TOKENIZERS.pop(backend.vocab, None)
    tokenizer = grammar.tokenizer_for(backend.vocab, backend.eos_ids, backend.encode)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    constraint = grammar.Constraint(tokenizer, grammar.from_schema(schema))
    compile_s = time.perf_counter() - started
    masks = []
    for token in tokens:
        started = time.perf_counter()
        constraint.apply(torch.zeros(vocab))
        masks.append(time.perf_counter() - started)
        constraint.consume(token)
    print(f"llguidance: tokenizer {setup * 1e3:.0f} ms (once per model), compile "
          f"{compile_s * 1e3:.1f} ms per schema, mask {statistics.median(masks) * 1e3:.3f} ms "
          f"median / {max(masks) * 1e3:.2f} ms max per step")
    try:
        import xgrammar as xgr
    except ImportError:
        print("xgrammar: not installed")
        return
    started = time.perf_counter()
    info = xgr.TokenizerInfo([b if b is not None else b"<|special|>"
                              for b in backend.vocab.token_bytes],
                             vocab_type=xgr.VocabType.RAW, stop_token_ids=sorted(backend.eos_ids))
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                            separators=(", ", ": "))
    compile_s = time.perf_counter() - started
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    masks = []
    for token in tokens:
        started = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask)
        logits = torch.zeros(1, vocab)
        xgr.apply_token_bitmask_inplace(logits, bitmask)
        masks.append(time.perf_counter() - started)
        assert matcher.accept_token(token)
    print(f"xgrammar: tokenizer {setup * 1e3:.0f} ms (once per model), compile "
          f"{compile_s * 1e3:.1f} ms per schema, mask {statistics.median(masks) * 1e3:.3f} ms "
          f"median / {max(masks) * 1e3:.2f} ms max per step")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-table", action="store_true")
    parser.add_argument("--no-overhead", action="store_true")
    parser.add_argument("--no-forced", action="store_true")
    parser.add_argument("--engines", action="store_true")
    parser.add_argument("--conditions", help="comma-separated: 'no prefill', 'prefill only', "
                        "'schema + prefill', 'schema only' (default: all)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    backend = _load()
    print(f"SmolLM2-135M-Instruct on {backend.name}/{backend.device}, "
          f"{torch.get_num_threads()} threads")
    if args.engines:
        engines(backend)
    if not args.no_table:
        table(backend, args.prompts, args.max_tokens, args.conditions)
    if not args.no_overhead:
        overhead(backend, min(args.prompts, 5), args.max_tokens)
    if not args.no_forced:
        forced(backend, args.max_tokens * 2)


if __name__ == "__main__":
    main()

"""Tool calling on SmolLM2 (llmcli_local.tools): 20 prompts that each call for one of two
tools; how many replies are a call whose arguments validate against the tool's schema, with
the grammar ("a call whose arguments match the schema", tool_choice required) and without
it (the same system prompt, free decoding: a call counts if the reply contains one that
parses and validates, anywhere).

    python tests/bench/bench_tools.py [--prompts 20] [--max-tokens 48] [--threads N]

Greedy decoding. Not a pytest test. The keep-alive worker is off (one process, one model).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Sydney", "Toronto", "Madrid", "Seoul",
          "Nairobi"]
SUMS = [(17, 25), (3, 4), (120, 7), (9, 91), (44, 56), (2, 2), (13, 29), (100, 250),
        (8, 15), (61, 39)]


def prompts(count: int) -> list[str]:
    weather = [f"What is the weather in {city} right now?" for city in CITIES]
    sums = [f"What is {a} plus {b}?" for a, b in SUMS]
    mixed = [p for pair in zip(weather, sums, strict=True) for p in pair]
    return mixed[:count]


def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
    """Get the current weather for a city."""
    return {"city": city, "temperature": 21, "unit": unit}


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def valid_call(tools: dict[str, Any], name: str, arguments: Any) -> bool:
    import jsonschema

    tool = tools.get(name)
    if tool is None or not isinstance(arguments, dict):
        return False
    try:
        jsonschema.validate(arguments, dict(tool.parameters))
    except jsonschema.ValidationError:
        return False
    return True


def in_text(tools: dict[str, Any], text: str) -> bool:
    for match in CALL.finditer(text):
        try:
            data = json.loads(match.group(1))
        except ValueError:
            continue
        if isinstance(data, dict) and valid_call(tools, str(data.get("name")),
                                                  data.get("arguments")):
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("LLMCLI_LOCAL_KEEP_ALIVE", "0")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from llmcli_local import tools as local_tools

    import llmcli
    from llmcli import Tool

    model = llmcli.get_model("smollm2")
    offered = [Tool.function(get_weather), Tool.function(add)]
    by_name = {t.name: t for t in offered}
    grammar = local_tools.grammar
    results: dict[str, list[bool]] = {"grammar": [], "no grammar": []}
    seconds: dict[str, float] = {"grammar": 0.0, "no grammar": 0.0}
    samples: dict[str, str] = {}
    model.prompt("warm up", max_tokens=1, log=False).text()
    for prompt in prompts(args.prompts):
        for condition in ("grammar", "no grammar"):  # interleaved
            local_tools.grammar = grammar if condition == "grammar" else (  # type: ignore
                lambda tools, choice="auto": None)
            started = time.process_time()
            response = model.prompt(prompt, tools=offered, tool_choice="required",
                                    max_tokens=args.max_tokens, temperature=0, log=False)
            text = response.text()
            calls = response.tool_calls()
            seconds[condition] += time.process_time() - started
            ok = (any(valid_call(by_name, c.name, c.arguments) for c in calls)
                  or in_text(by_name, text))
            results[condition].append(ok)
            samples.setdefault(f"{condition} {ok}", f"{prompt!r} -> "
                               f"{[c.to_dict() for c in calls] or text[:120]!r}")
    local_tools.grammar = grammar  # type: ignore[assignment]
    print(f"SmolLM2, {len(results['grammar'])} prompts, two tools, greedy, "
          f"max_tokens {args.max_tokens}")
    print("| condition | valid calls | CPU s per prompt |")
    print("|---|---|---|")
    for condition, oks in results.items():
        print(f"| {condition} | {sum(oks)}/{len(oks)} | "
              f"{seconds[condition] / max(1, len(oks)):.1f} |")
    for key, sample in sorted(samples.items()):
        print(f"  e.g. [{key}] {sample}")


if __name__ == "__main__":
    main()

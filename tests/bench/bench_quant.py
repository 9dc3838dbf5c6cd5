"""Quantized decode (``-o quantize``, #11): SmolLM2 on the lean backend at full precision,
int8 and int4, against llama.cpp's Q4_1 of the same GGUF (llama-cpp-python, the library
under ``llm -m SmolLM2`` that tests/bench/bench_e2e.py installs), all in one run.

    python tests/bench/bench_quant.py [--decode-tokens 64] [--prompt-tokens 200] [--runs 3]
                                      [--rounds 2] [--threads 2]
                                      [--llama-python /tmp/llm-smol-venv/bin/python]

Each engine measures in its own subprocess, engines alternating over ``--rounds``; a
subprocess loads the model (``load s``: the first int8/int4 load quantizes and writes the
cache, later ones read it), runs the prompt pass, then greedy decode steps. decode tok/s =
tokens / time of the one-token steps (EOS ignored; argmax included), best of ``--runs`` in a
subprocess, best over rounds (on a shared machine other processes only slow a run down).
llama.cpp runs the same prompt tokens through ``Llama.eval`` with the same step loop. Ratios
are against full precision and against llama.cpp, from the same run. Not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

SENTENCE = ("The quick brown fox jumps over the lazy dog while the committee reviews the "
            "quarterly report on regional rainfall. ")
QUESTION = "Summarise the text above in one sentence."
ENGINES = ("none", "int8", "int4", "llama.cpp")


def _prompt_ids(backend: Any, prompt_tokens: int) -> list[int]:
    per = len(backend.encode(SENTENCE))
    body = SENTENCE * max(1, (prompt_tokens - 40) // per)
    text = backend.render([{"role": "user", "content": body + "\n\n" + QUESTION}])
    return list(backend.encode(text))


def _ours(scheme: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from llmcli_local import loader
    from llmcli_local.config import RuntimeConfig
    from llmcli_local.sources import ModelSource, smollm2_path

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    config = RuntimeConfig.build().replace(device="cpu", engine="lean", quantize=scheme)
    backend = loader.load(ModelSource("gguf", smollm2_path()), config, show_progress=False)
    load = time.perf_counter() - start
    ids = _prompt_ids(backend, args.prompt_tokens)
    capacity = len(ids) + args.decode_tokens + 1
    best_prompt = best_decode = float("inf")
    tokens: list[int] = []
    logits = None
    for _ in range(args.runs + 1):  # the first is a warm-up
        start = time.perf_counter()
        logits, cache = backend.prompt(ids, capacity)
        prompt = time.perf_counter() - start
        token = int(logits.argmax())
        tokens = [token]
        start = time.perf_counter()
        for _ in range(args.decode_tokens):
            token = int(backend.step(cache, token).argmax())
            tokens.append(token)
        decode = time.perf_counter() - start
        best_prompt, best_decode = min(best_prompt, prompt), min(best_decode, decode)
    assert logits is not None
    return {"load_s": load, "prompt_tok_s": len(ids) / best_prompt,
            "decode_tok_s": args.decode_tokens / best_decode, "prompt_tokens": len(ids),
            "logits": logits.tolist(), "text": backend.tokenizer.decode(tokens)}


def _llama(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from llama_cpp import Llama

    # Its own venv has no llmcli: the parent passes the GGUF's path.
    start = time.perf_counter()
    llm = Llama(model_path=args.gguf, n_ctx=2048, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    load = time.perf_counter() - start
    body = SENTENCE * max(1, (args.prompt_tokens - 40) // 21)
    text = (f"<|im_start|>user\n{body}\n\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    best_prompt = best_decode = float("inf")
    tokens: list[int] = []
    for _ in range(args.runs + 1):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        prompt = time.perf_counter() - start
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens = [token]
        start = time.perf_counter()
        for _ in range(args.decode_tokens):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            tokens.append(token)
        decode = time.perf_counter() - start
        best_prompt, best_decode = min(best_prompt, prompt), min(best_decode, decode)
    return {"load_s": load, "prompt_tok_s": len(ids) / best_prompt,
            "decode_tok_s": args.decode_tokens / best_decode, "prompt_tokens": len(ids),
            "text": llm.detokenize(tokens).decode(errors="replace")}


def _worker(engine: str, args: argparse.Namespace) -> None:
    result = _llama(args) if engine == "llama.cpp" else _ours(engine, args)
    print(json.dumps(result))


def _run(engine: str, args: argparse.Namespace, argv: list[str]) -> dict[str, Any] | None:
    python = args.llama_python if engine == "llama.cpp" else sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run([python, __file__, *argv, "--worker", engine], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{engine}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _has_llama(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import llama_cpp"],
                              capture_output=True).returncode == 0
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-python", default="/tmp/llm-smol-venv/bin/python",
                        help="a Python with llama-cpp-python (bench_e2e.py's llm venv)")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--gguf", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args)
        return
    from llmcli_local.sources import smollm2_path

    argv = [f"--decode-tokens={args.decode_tokens}", f"--prompt-tokens={args.prompt_tokens}",
            f"--runs={args.runs}", f"--threads={args.threads}", f"--gguf={smollm2_path()}"]
    engines = args.engines.split(",")
    if "llama.cpp" in engines and not _has_llama(args.llama_python):
        print(f"no llama_cpp in {args.llama_python}: its row is left out", file=sys.stderr)
        engines.remove("llama.cpp")
    best: dict[str, dict[str, Any]] = {}
    for round_ in range(args.rounds):
        for engine in engines:
            result = _run(engine, args, argv)
            if result is None:
                continue
            print(f"round {round_ + 1} {engine:<10} decode {result['decode_tok_s']:6.1f} tok/s "
                  f"load {result['load_s']:5.2f} s", file=sys.stderr)
            kept = best.setdefault(engine, result)
            kept["loads"] = [*kept.get("loads", []), round(result["load_s"], 2)]
            for key in ("decode_tok_s", "prompt_tok_s"):
                kept[key] = max(kept[key], result[key])
    full = best.get("none", {}).get("decode_tok_s")
    llama = best.get("llama.cpp", {}).get("decode_tok_s")
    print(f"threads {args.threads}, prompt {args.prompt_tokens} tokens, "
          f"decode {args.decode_tokens} tokens, best of {args.runs} x {args.rounds} rounds")
    print(f"{'engine':<10} {'decode tok/s':>12} {'× fp32':>7} {'× llama.cpp':>11} "
          f"{'prompt tok/s':>12} {'max |Δlogit|':>12} {'loads s':>12}  text")
    reference = best.get("none", {}).get("logits")
    for engine, r in best.items():
        decode = r["decode_tok_s"]
        x_full = f"{decode / full:7.2f}" if full else f"{'-':>7}"
        x_llama = f"{decode / llama:11.2f}" if llama else f"{'-':>11}"
        delta = "-"
        if reference and "logits" in r:
            delta = f"{max(abs(a - b) for a, b in zip(r['logits'], reference, strict=True)):.3f}"
        print(f"{engine:<10} {decode:12.1f} {x_full} {x_llama} {r['prompt_tok_s']:12.1f} "
              f"{delta:>12} {str(r['loads']):>12}  {r['text'][:50]!r}")


if __name__ == "__main__":
    main()

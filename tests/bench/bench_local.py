"""Local-runtime benchmark: our decode loop against transformers' ``model.generate`` on the
same weights and prompt, plus the cost of a long prefill and the CLI end to end.

    python tests/bench/bench_local.py [--prompt-tokens 500] [--decode-tokens 64] [--runs 3]
                                      [--rounds 2] [--device auto|cpu|cuda] [--no-cli]
                                      [--model PATH]

``--model``: a GGUF file or Hugging Face model directory instead of SmolLM2 (e.g. one made by
``shaped_model.py``: SmolLM2's shape with random weights, where the weights cannot travel).

Each engine runs in its own subprocess so that peak memory (RSS on CPU, allocated memory on
CUDA) is its own. On CUDA it adds our static-KV-cache + CUDA-graph path and generate's static
cache compiled with ``torch.compile(mode="reduce-overhead")``. ``ours`` is the default path
(on CPU and CUDA the lean backend, ``llmcli_local/lean/``: its own loading, one SDPA prompt
pass and its decode step); ``ours-hf-step`` is the same decode loop over the transformers
backend, calling transformers' forward for every step. Not a pytest test.

Methodology (identical for both engines): time to first token = a 1-token generation,
prompt tok/s = prompt tokens / that time, decode tok/s = (N - 1) / (time for N tokens - time
for 1 token); N tokens are forced (EOS ignored); greedy; best of ``--runs`` in each worker,
best worker over ``--rounds`` (engines alternate).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SENTENCE = ("The quick brown fox jumps over the lazy dog while the committee reviews the "
            "quarterly report on regional rainfall. ")
QUESTION = "Summarise the text above in one sentence."


def _messages(backend: Any, prompt_tokens: int) -> list[dict[str, str]]:
    per = len(backend.encode(SENTENCE))
    body = SENTENCE * max(1, (prompt_tokens - 40) // per)
    return [{"role": "user", "content": body + "\n\n" + QUESTION}]


def _best_time(fn: Any, runs: int) -> float:
    """The fastest of ``runs`` timed calls after a warm-up. The best, not the median: on a
    shared machine other processes only ever make a run slower."""
    fn()  # warm-up: allocator, kernels, lazy initialisation
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # VmHWM: this process's own peak RSS. ru_maxrss would also count the parent's peak at
    # fork time (Linux keeps it across exec), e.g. a GGUF conversion the parent just did.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _source(args: argparse.Namespace) -> Any:
    from llmcli_local.model import SmolLM2
    from llmcli_local.sources import inspect_path

    return inspect_path(args.model) if args.model else SmolLM2().source()


def _forced(backend: Any) -> Any:
    """The backend without end-of-turn ids: every run decodes exactly the tokens asked for."""
    return dataclasses.replace(backend, eos_ids=frozenset())


def worker(engine_name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from llmcli_local import decode, loader
    from llmcli_local.config import RuntimeConfig

    # "ours" is what a user gets (the lean backend); "ours-cuda-graphs" the transformers
    # backend's static cache and CUDA graphs; every other row loads through transformers,
    # which model.generate and transformers' own decode step need.
    options = {
        "ours": RuntimeConfig.build(),
        "ours-cuda-graphs": RuntimeConfig.build().replace(kv_cache="static", cuda_graphs=True),
    }.get(engine_name, RuntimeConfig.build().replace(engine="transformers"))
    loaded = loader.load(_source(args), options.replace(device=args.device),
                         show_progress=True)
    device = loaded.device
    messages = _messages(loaded, args.prompt_tokens)
    n = args.decode_tokens

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    if engine_name.startswith("ours"):
        # "ours-hf-step": our loop around transformers' own forward for each decode step.
        forced = _forced(loaded)

        def ours(tokens: int) -> None:
            settings = decode.GenerationSettings(max_tokens=tokens, prefill_mode="none")
            for _ in decode.generate(forced, messages, "", settings):
                pass
            sync()

        prompt_len = len(decode.build_prompt(
            loaded, messages, "", decode.GenerationSettings(prefill_mode="none")).ids)
        run = ours
    else:
        static = engine_name == "generate-static-compiled"
        ids = torch.tensor([loaded.encode(loaded.render(messages))], device=device)
        prompt_len = ids.shape[1]
        extra: dict[str, Any] = {}
        if static:
            extra["cache_implementation"] = "static"
            loaded.model.forward = torch.compile(loaded.model.forward, mode="reduce-overhead")

        def baseline(tokens: int) -> None:
            with torch.inference_mode():
                loaded.model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                    min_new_tokens=tokens, do_sample=False, pad_token_id=0, **extra,
                )
            sync()

        run = baseline

    ttft = _best_time(lambda: run(1), args.runs)
    total = _best_time(lambda: run(n), args.runs)
    result: dict[str, Any] = {
        "engine": engine_name, "device": device, "threads": torch.get_num_threads(),
        "prompt_tokens": prompt_len, "decode_tokens": n,
        "ttft_s": ttft, "prompt_tok_s": prompt_len / ttft,
        "decode_tok_s": (n - 1) / max(total - ttft, 1e-9),
        "peak_mb": _peak_memory_mb(device),
    }
    if engine_name == "ours" and args.extras:
        result.update(_prefill_cost(loaded, args))
        # Reloading from the converted cache, imports already done (a process's second load
        # pays only this; the first also pays ~3 s of torch/transformers imports).
        loader.unload_all()
        start = time.perf_counter()
        loader.load(_source(args), RuntimeConfig.build().replace(device=args.device))
        result["cached_load_s"] = time.perf_counter() - start
    return result


def _prefill_cost(loaded: Any, args: argparse.Namespace) -> dict[str, Any]:
    """A long prefill in one forward pass vs forcing it token by token through the cache
    (what a runtime without native prefill, or grammar-forcing, would do)."""
    from llmcli_local import decode

    prefill_ids = loaded.encode(SENTENCE * 60)[: args.prefill_tokens]
    prefill = b"".join(loaded.vocab.bytes_of(i) for i in prefill_ids).decode()
    messages = [{"role": "user", "content": "Continue the text."}]
    settings = decode.GenerationSettings(prefill_mode="none")
    full = decode.build_prompt(loaded, messages, prefill, settings).ids
    head = decode.build_prompt(loaded, messages, "", settings).ids
    forced = full[len(head):]

    def one_pass() -> None:
        loaded.prompt(full, len(full) + 1)

    def token_by_token() -> None:
        _, cache = loaded.prompt(head, len(full) + 1)
        for token in forced:
            loaded.step(cache, token)

    single = _best_time(one_pass, 3)
    # The model is warm by now; one run of the slow path is enough (and takes ~30 s).
    start = time.perf_counter()
    token_by_token()
    stepped = time.perf_counter() - start
    return {"prefill_tokens": len(forced), "prefill_one_pass_s": single,
            "prefill_token_by_token_s": stepped}


def _spawn(engine_name: str, args: argparse.Namespace, extras: bool) -> dict[str, Any] | None:
    """One engine's figures from a fresh process, or None (its error printed) where it
    failed: the other rows still come out."""
    cmd = [sys.executable, __file__, "--worker", engine_name,
           "--prompt-tokens", str(args.prompt_tokens), "--decode-tokens", str(args.decode_tokens),
           "--prefill-tokens", str(args.prefill_tokens), "--runs", str(args.runs),
           "--device", args.device, *(["--model", args.model] if args.model else []),
           *(["--extras"] if extras else [])]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        print(f"{engine_name}: no result within {args.worker_timeout} s", file=sys.stderr)
        return None
    if out.returncode != 0:
        # The worker's last lines (torch's own debug logging left out), then the next engine.
        lines = [line for line in out.stderr.splitlines() if not line.startswith("DEBUG")]
        print(f"{engine_name} failed (exit {out.returncode}):", *lines[-15:], sep="\n  ",
              file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _cli_end_to_end(runs: int) -> float | None:
    """Wall time of the real command, converted cache already in place, logging on."""
    llmcli = Path(sys.executable).parent / "llmcli"
    if not llmcli.exists():
        return None
    cmd = [str(llmcli), "-m", "smollm2", "Name three US states.", "--prefill", "1."]
    with tempfile.TemporaryDirectory() as user:
        env = {**os.environ, "LLMCLI_USER_PATH": user}
        env.pop("LLMCLI_LOAD_PLUGINS", None)
        times = []
        for _ in range(runs + 1):
            start = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"CLI failed: {done.stderr.strip()}")
        print(f"  CLI output: {done.stdout.strip()!r}")
        return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--prefill-tokens", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--no-cli", action="store_true")
    parser.add_argument("--engines", help="comma-separated engines to run (default: all of "
                        "ours, ours-hf-step, generate; on CUDA also ours-cuda-graphs, "
                        "generate-static-compiled); generate and ours are always run")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the prefill (one pass vs token by token) and load rows")
    parser.add_argument("--worker-timeout", type=float, default=600,
                        help="seconds one engine's process may take (default 600)")
    parser.add_argument("--model", help="a GGUF file or HF model directory (default: SmolLM2)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--extras", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    # Convert once up front so no engine's timing includes it.
    from llmcli_local import loader

    source = _source(args)
    if source.format == "gguf":
        loader.convert_gguf(source.path)
    import torch

    cuda = args.device != "cpu" and torch.cuda.is_available()
    engines = ["ours", "ours-hf-step", "generate"]
    if cuda:
        engines += ["ours-cuda-graphs", "generate-static-compiled"]
    if args.engines:
        chosen = {"ours", "generate", *args.engines.split(",")}
        engines = [name for name in engines if name in chosen]
    # Alternate the engines over several rounds and keep each one's best round, so that a
    # burst of load from other processes does not favour whichever ran at a quiet moment.
    results: dict[str, dict[str, Any]] = {}
    for round_ in range(args.rounds):
        for name in engines:
            r = _spawn(name, args, extras=not args.no_extras and (round_ == 0
                                                                    or name not in results))
            if r is None:
                continue
            best = results.get(name)
            if best is None or r["decode_tok_s"] > best["decode_tok_s"]:
                if best is not None:
                    r.update({k: v for k, v in best.items() if k not in r})
                    r["ttft_s"] = min(r["ttft_s"], best["ttft_s"])
                    r["prompt_tok_s"] = max(r["prompt_tok_s"], best["prompt_tok_s"])
                results[name] = r
            else:
                best["ttft_s"] = min(r["ttft_s"], best["ttft_s"])
                best["prompt_tok_s"] = max(r["prompt_tok_s"], best["prompt_tok_s"])
    if "generate" not in results or "ours" not in results:
        raise SystemExit("no figures: the baseline or our engine failed (see above)")
    base = results["generate"]
    title = Path(args.model).name if args.model else "SmolLM2-135M-Instruct"
    print(f"{title} on {base['device']} ({base['threads']} threads), "
          f"{base['prompt_tokens']}-token prompt, {args.decode_tokens} decoded tokens, "
          f"best of {args.runs} runs x {args.rounds} rounds")
    print(f"{'engine':26} {'prompt tok/s':>12} {'decode tok/s':>12} {'TTFT s':>8} "
          f"{'peak MB':>8} {'decode ×':>9}")
    for name, r in results.items():
        ref = results.get("generate-static-compiled", base) if name == "ours-cuda-graphs" \
            else base
        speedup = r["decode_tok_s"] / ref["decode_tok_s"]
        print(f"{name:26} {r['prompt_tok_s']:12.0f} {r['decode_tok_s']:12.1f} "
              f"{r['ttft_s']:8.3f} {r['peak_mb']:8.0f} {speedup:9.2f}")
    ours = results["ours"]
    print(f"ratios ours/generate: prompt {ours['prompt_tok_s'] / base['prompt_tok_s']:.2f}×, "
          f"decode {ours['decode_tok_s'] / base['decode_tok_s']:.2f}×, "
          f"TTFT {ours['ttft_s'] / base['ttft_s']:.2f}×, "
          f"peak memory {ours['peak_mb'] / base['peak_mb']:.2f}×")
    if "prefill_tokens" in ours:
        print(f"{ours['prefill_tokens']}-token prefill: one forward pass "
              f"{ours['prefill_one_pass_s']:.2f} s vs token by token "
              f"{ours['prefill_token_by_token_s']:.2f} s "
              f"({ours['prefill_token_by_token_s'] / ours['prefill_one_pass_s']:.0f}× slower)")
        print(f"load from the converted cache (imports warm): {ours['cached_load_s']:.2f} s")
    if not args.no_cli and not args.model:
        cli = _cli_end_to_end(args.runs)
        if cli is not None:
            print(f"llmcli -m smollm2 \"Name three US states.\" --prefill \"1.\": "
                  f"{cli:.2f} s end to end (median of {args.runs}, cache warm)")


if __name__ == "__main__":
    main()

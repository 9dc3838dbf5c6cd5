"""The draft of speculative decoding: the same model with int4 weights (``-o speculative``).

On CPU a full-precision decode step of a model like SmolLM2-135M reads every weight once
(540 MB) and is bound by memory bandwidth, so a pass over eight tokens costs about what a
step over one does. The draft, the model's own weights quantized to int4 (a seventh of the
bytes, and one fused kernel call per projection), proposes the next few tokens in a few
cheap steps; one full-precision pass over them checks every proposal at once
(:mod:`llmcli_local.speculation`). Under greedy decoding the text is the
full-precision model's: a proposal is kept only where it is the full-precision argmax.

The draft shares the model's embeddings, norms and tokenizer (no copy); only its linear
layers are its own, read from the same cache as ``-o quantize int4``'s (quantized once).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch

from llmcli_local.backend import SpeculationCosts
from llmcli_local.config import DraftChoice
from llmcli_local.lean.weights import Weights

__all__ = ["COSTS", "MIN_PARAMETERS", "costs", "draft_weights"]

log = logging.getLogger(__name__)

#: ``auto`` drafts for models of at least this many parameters in their linear layers: below
#: that a step is bound by its operations' count, not by reading weights, and a quantized
#: step costs about what a full-precision one does.
MIN_PARAMETERS = 50_000_000


#: What the lean backend's passes cost on CPU, per weight kind and for one thread or more,
#: in one-row steps of that model (SmolLM2-135M, 2-core AMD EPYC, torch 2.13;
#: docs/benchmarks.md, "Speculation in the scheduler" and "Packed full-precision weights").
#:
#: - Full precision (``tests/bench/bench_pass_costs.py``, the weights packed for oneDNN, a
#:   quiet machine, 2026-12-07; least-squares fits of its figures): with two threads (the
#:   default on 2 cores) 8 rows' step costs 1.63 steps, a pass over 5 tokens 1.15 and over
#:   8 rows x 3 tokens 2.79, and the int4 draft's step 0.49 (8 rows: 1.26); with one thread
#:   1.96, 1.47, 3.56 and 0.59 (1.63). The draft is dear against a step that reads its
#:   weights at the memory's speed: by these fits 8 rows' proposals never pay. A lone row
#:   decides on its measured costs (``speculation.Calibration``), and gains on most text
#:   (1.04-1.63x the plain loop, measured alone).
#: - Quantized weights, either: their kernels' cost grows with the rows from the first
#:   extra one (int8: a pass over 3 tokens 1.16 steps, over 5 1.6; int4 1.29 and 1.9), and
#:   an int4 draft's step would cost 0.75 of an int8 step, so no model draft pays: they
#:   draft by lookup, free, which proposes only where the text repeats itself.
COSTS: dict[tuple[str, bool], SpeculationCosts] = {
    ("none", False): SpeculationCosts(step_base=0.9, step_per_row=0.133, verify_base=0.96,
                                      verify_per_row=0.068, verify_per_token=0.083,
                                      draft_base=0.387, draft_per_row=0.15),
    ("none", True): SpeculationCosts(step_base=0.86, step_per_row=0.096, verify_base=0.818,
                                     verify_per_row=0.131, verify_per_token=0.044,
                                     draft_base=0.341, draft_per_row=0.112),
    ("int8", False): SpeculationCosts(step_base=0.8, step_per_row=0.2, verify_base=0.55,
                                      verify_per_row=0.05, verify_per_token=0.2),
    ("int8", True): SpeculationCosts(step_base=0.75, step_per_row=0.24, verify_base=0.55,
                                     verify_per_row=0.05, verify_per_token=0.2),
    ("int4", False): SpeculationCosts(step_base=0.65, step_per_row=0.3, verify_base=0.6,
                                      verify_per_row=0.05, verify_per_token=0.27),
    ("int4", True): SpeculationCosts(step_base=0.65, step_per_row=0.3, verify_base=0.6,
                                     verify_per_row=0.05, verify_per_token=0.27),
}


def costs(quantize: str, threads: int) -> SpeculationCosts:
    """The cost table of a model with ``quantize`` weights running on ``threads`` threads."""
    return COSTS[(quantize, threads > 1)]


def _parameters(weights: Weights) -> int:
    count = 0
    for layer in weights.layers:
        for name in ("q", "k", "v", "out", "gate", "up", "down"):
            weight = getattr(layer, name)
            if isinstance(weight, torch.Tensor):
                count += weight.numel()
    if isinstance(weights.lm_head, torch.Tensor):
        count += weights.lm_head.numel()
    return count


def draft_weights(weights: Weights, directory: Path,
                  choice: DraftChoice = "auto") -> Weights | None:
    """A copy of full-precision ``weights`` whose linear layers and output head are
    quantized (the other tensors shared, not copied), or None: no draft wanted, or the
    model's shapes do not suit the kernel (the model then decodes one step per token).

    ``choice`` (``RuntimeConfig.draft``, from ``LLMCLI_LOCAL_DRAFT``): ``auto`` drafts in
    int4 for models of at least :data:`MIN_PARAMETERS` (on CPU at full precision, where the
    lean backend asks), ``int4`` or ``int8`` whatever the size, ``none`` never."""
    from llmcli_local.lean.quant import Int4Weight, quantize_weights

    if choice in ("none", "lookup") or (choice == "auto" and _parameters(weights) < MIN_PARAMETERS):
        return None
    scheme: Literal["int4", "int8"] = "int8" if choice == "int8" else "int4"
    draft = replace(weights, layers=[replace(layer) for layer in weights.layers])
    try:
        quantize_weights(draft, directory, scheme)
    except Exception as exc:  # noqa: BLE001 - a draft is an optimisation, never a failure
        log.debug("no %s draft for %s: %s", scheme, directory, exc)
        return None
    # The draft only multiplies: int4's plain nibbles (kept for the output head's row
    # gathers, which only the model itself does) would be ~70 MB more for SmolLM2.
    for layer in draft.layers:
        for name in ("qkv", "out", "gate_up", "down"):
            weight = getattr(layer, name)
            if isinstance(weight, Int4Weight):
                setattr(layer, name, weight.without_rows())
    if isinstance(draft.lm_head, Int4Weight):
        draft.lm_head = draft.lm_head.without_rows()
    return draft

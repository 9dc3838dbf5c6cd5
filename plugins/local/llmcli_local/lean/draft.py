"""The draft of speculative decoding: the same model with int4 weights (``-o speculative``).

On CPU a full-precision decode step of a model like SmolLM2-135M reads every weight once
(540 MB) and is bound by memory bandwidth, so a pass over eight tokens costs about what a
step over one does. The draft, the model's own weights quantized to int4 (a seventh of the
bytes, and one fused kernel call per projection), proposes the next few tokens in a few
cheap steps; one full-precision pass over them checks every proposal at once
(:meth:`llmcli_local.decode.Decoding.step_run`). Under greedy decoding the text is the
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

from llmcli_local.config import DraftChoice
from llmcli_local.lean.weights import Weights

__all__ = ["MIN_PARAMETERS", "draft_weights"]

log = logging.getLogger(__name__)

#: ``auto`` drafts for models of at least this many parameters in their linear layers: below
#: that a step is bound by its operations' count, not by reading weights, and a quantized
#: step costs about what a full-precision one does.
MIN_PARAMETERS = 50_000_000


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

    if choice == "none" or (choice == "auto" and _parameters(weights) < MIN_PARAMETERS):
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

"""``-o`` options of every local model, and the durations ``keep_alive`` takes. Cheap to
import (no torch)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from llmcli.models import ReasoningPrefillOption, StrList
from llmcli_local.config import (
    DEFAULT_KEEP_ALIVE,
    Device,
    Engine,
    KVCache,
    MaxTokens,
    PrefillModeField,
    Quantize,
    Temperature,
    TopK,
    TopP,
    default_keep_alive,
)

__all__ = ["DEFAULT_KEEP_ALIVE", "LocalOptions", "parse_duration"]


def parse_duration(value: Any) -> float:
    """Seconds from ``300``, ``"300"``, ``"90s"``, ``"5m"`` or ``"1h"``; 0 turns keep-alive off."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300, 90s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:])
        try:
            seconds = float(text[:-1] if scale else text) * (scale or 1)
        except ValueError:
            raise ValueError("expected a duration such as 300, 90s, 5m or 1h") from None
    if not 0 <= seconds <= 7 * 24 * 3600:
        raise ValueError("must be between 0 and 7 days")
    return seconds


class LocalOptions(ReasoningPrefillOption):
    """``-o`` options of every local model."""

    max_tokens: MaxTokens = Field(256, description="Most tokens to generate")
    temperature: Temperature = Field(
        0.0, description="0 = greedy (deterministic, the default); higher = more varied",
    )
    top_p: TopP = Field(1.0, description="Nucleus sampling mass")
    top_k: TopK = Field(0, description="Sample from the k likeliest tokens (0 = all)")
    seed: int | None = Field(None, description="Seed for sampling: same seed, same text")
    stop: StrList = Field(
        default_factory=list, description="Stop sequences (never included in the output)"
    )
    prefill_mode: PrefillModeField = Field(
        "chars",
        description="How the prefill is split into tokens: chars = the reply given the "
        "prefill's characters (the tokenizer's split, its last piece weighed over every "
        "canonical split in the same pass); heal = the tokenizer's split, last token(s) "
        "regenerated; none = the tokenizer's split as is; forced = grammar-forced decoding's "
        "split (slow on text the model would not write; 'exact' is its old name)",
    )
    token_healing: bool | None = Field(
        None, description="Old switch: 0 is prefill_mode none (use prefill_mode instead)"
    )
    enable_thinking: bool | None = Field(
        None, description="Passed to chat templates that have a thinking switch"
    )
    device: Device = Field("auto", description="Where to run")
    kv_cache: KVCache = Field(
        "dynamic", description="KV cache: grows as needed, or preallocated"
    )
    cuda_graphs: bool = Field(
        False, description="CUDA only: compile the decode step into a CUDA graph"
    )
    engine: Engine = Field(
        "auto",
        description="auto: the lean backend (no transformers) where it implements the model, "
        "else transformers; or force lean or transformers",
    )
    quantize: Quantize = Field(
        "none",
        description="Lean backend on CPU: weight-only int8 (per channel) or int4 (groups of "
        "32) for the linear layers and output head, quantized once and cached; none = the "
        "full-precision model",
    )
    speculative: bool = Field(
        True,
        description="Lean backend on CPU, greedy: a draft proposes a few tokens and one "
        "pass of the model checks them (the same text, faster), where the scheduler expects "
        "it to pay; the draft is the model's own int4 weights at full precision, prompt "
        "lookup (what followed the last tokens earlier in the text) with quantized weights "
        "or LLMCLI_LOCAL_DRAFT=lookup; 0 = one step per token (LLMCLI_LOCAL_DRAFT=none "
        "loads no draft)",
    )
    keep_alive: float = Field(
        default_factory=default_keep_alive,
        validate_default=True,
        description="Keep the model loaded in a background worker this long after a call "
        "(300, 90s, 5m, 1h; 0 = off; default 5m, or LLMCLI_LOCAL_KEEP_ALIVE)",
    )

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @model_validator(mode="after")
    def _token_healing_alias(self) -> LocalOptions:
        if self.token_healing is False:
            if "prefill_mode" in self.model_fields_set and self.prefill_mode != "none":
                raise ValueError(
                    f"token_healing 0 means prefill_mode none, not {self.prefill_mode}: "
                    "give only prefill_mode")
            # Past validation already (assigning would validate the model again).
            object.__setattr__(self, "prefill_mode", "none")
        return self

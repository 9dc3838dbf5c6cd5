"""The lean backend's one layer (``Decoder.forward`` in ``llmcli_local/lean/decoder.py``) on
every llama-like family it runs: each kind of pass (the prompt pass, one-row steps,
``extend``/``verify``, a batched step, the static batch's step, fused projections) gives
transformers' logits.

Adding a family: its entry in ``llmcli_local/lean/config.py``'s ``FAMILIES``, a tiny model
of it here (a fixture named in :data:`FAMILY_MODELS`), and these tests run on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llmcli_local import lean  # noqa: E402

from tests.local.conftest import load  # noqa: E402

#: One tiny model per family: llama (tied head), qwen2 (q/k/v bias), qwen3 (q/k norms,
#: q/k/v/o bias, a head_dim that is not hidden / heads, llama 3.1 RoPE scaling).
FAMILY_MODELS = ["tiny_model_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"]


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Qwen3 sharing the tiny tokenizer, its norms and biases made to count."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    directory = tmp_path_factory.mktemp("tiny-qwen3")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.save_pretrained(directory)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, attention_bias=True,
        max_position_embeddings=2048, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32},
    )
    torch.manual_seed(2)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:  # random init leaves these at 0 and 1
            attention = layer.self_attn
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj,
                         attention.o_proj):
                proj.bias.normal_(0, 0.5)
            for norm in (attention.q_norm, attention.k_norm):
                norm.weight.normal_(1, 0.5)
    model.save_pretrained(directory)
    return directory


def test_qwen3_is_a_config_entry() -> None:
    from llmcli_local.lean.config import FAMILIES, Family

    assert FAMILIES["qwen3"] == Family(attention_bias=True, qk_norm=True)
    assert FAMILIES["qwen2"] == Family(qkv_bias=True)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_pass_rotates_as_transformers_does_bit_for_bit(dtype: str) -> None:
    """A pass's RoPE is transformers' arithmetic exactly (a fused multiply-add here rounds
    differently, and quantized weights' bf16 casts amplify that into their logits); a step's
    per-row matrices agree with it to float rounding."""
    from llmcli_local.lean.config import RopeConfig
    from llmcli_local.lean.decoder import Rotary

    kind = getattr(torch, dtype)
    rotary = Rotary(RopeConfig(1e4), 64, torch.device("cpu"))
    positions = torch.arange(300)
    torch.manual_seed(0)
    qk = (torch.randn(300, 6, 64) * 3).to(kind)
    cos, sin = (t.unsqueeze(1) for t in rotary.angles(positions, kind))
    expected = qk * cos + torch.cat((-qk[..., 32:], qk[..., :32]), dim=-1) * sin
    assert torch.equal(rotary.at(positions, kind, step=False)(qk), expected)
    stepped = rotary.at(positions, kind, step=True)(qk)
    assert torch.allclose(stepped.float(), expected.float(), atol=0.1 if dtype == "bfloat16"
                          else 1e-5)


def _close(got: Any, expected: Any) -> bool:
    return torch.allclose(got.float(), expected.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_every_pass_gives_transformers_logits(model: str,
                                              request: pytest.FixtureRequest) -> None:
    from llmcli_local.lean.static import StaticBatch

    directory = request.getfixturevalue(model)
    assert lean.why_not(directory) is None
    ours = load(directory, engine="lean")
    assert ours.name == "lean"
    reference = load(directory, engine="transformers")
    ids = ours.encode(ours.render([{"role": "user", "content": "Tell me about the sea."}]))
    more = [5, 17, 42, 99]
    count = len(ids)
    with torch.inference_mode():
        expected = reference.model(input_ids=torch.tensor([ids + more])).logits[0].float()
    # The prompt pass, every row.
    scores, cache = ours.prompt_scores(ids, count + 16, keep=count)
    assert _close(scores.all(), expected[:count])
    # One-row steps, then a pass over several new tokens after them (verify).
    for at, token in enumerate(more[:2]):
        assert _close(ours.step(cache, token), expected[count + at])
    assert _close(ours.verify(cache, more[2:]), expected[count + 2:])
    # A batched step of two sequences at different positions, dynamic and static.
    for backend in (ours, dataclasses.replace(ours, static=StaticBatch(ours.decoder, 2, 64))):
        _, whole = backend.prompt(ids, count + 8)
        _, short = backend.prompt(ids[:-3], count + 8)
        rows = backend.step_batch([whole, short], [more[0], ids[-3]])
        assert _close(rows, torch.stack((expected[count], expected[count - 3])))
    assert backend.static is not None and backend.static.replays == 1


@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_fused_projections_compute_what_separate_ones_do(model: str,
                                                          request: pytest.FixtureRequest
                                                          ) -> None:
    """Quantized weights come fused (q/k/v and gate/up one kernel call each): the same layer
    with those projections, here in full precision, gives the same logits, one row or
    several (a wrong split or head order would show far above float rounding)."""
    from llmcli_local.lean.config import LeanConfig
    from llmcli_local.lean.decoder import Decoder
    from llmcli_local.lean.weights import CpuLinear

    def dense(weight: Any) -> Any:
        return weight.weight if isinstance(weight, CpuLinear) else weight

    directory = request.getfixturevalue(model)
    plain = load(directory, engine="lean").decoder
    weights = dataclasses.replace(plain.weights, layers=[
        dataclasses.replace(layer) for layer in plain.weights.layers])
    for layer in weights.layers:
        layer.qkv = torch.cat([dense(layer.q), dense(layer.k), dense(layer.v)])
        if layer.q_bias is not None:
            layer.qkv_bias = torch.cat([layer.q_bias, layer.k_bias, layer.v_bias])
        layer.gate_up = torch.cat([dense(layer.gate), dense(layer.up)])
        layer.q = layer.k = layer.v = layer.gate = layer.up = None
    fused = Decoder(LeanConfig.read(directory), weights)
    assert fused.fused and not plain.fused
    ids = [1, 5, 9, 33, 7, 2, 40, 41]
    with torch.inference_mode():
        caches = [[d.new_buffers(32) for _ in range(2)] for d in (plain, fused)]
        for decoder, (first, second) in zip((plain, fused), caches, strict=True):
            decoder.prompt(first, ids, 0)
            decoder.prompt(second, ids[:5], 0)
        assert _close(fused.step(caches[1][0], 3, 8), plain.step(caches[0][0], 3, 8))
        assert _close(fused.step_batch(caches[1], [4, 6], [9, 5]),
                      plain.step_batch(caches[0], [4, 6], [9, 5]))
        for mine, theirs in zip(caches[0][0], caches[1][0], strict=True):
            assert torch.allclose(mine[:, :, :10], theirs[:, :, :10], atol=1e-5)

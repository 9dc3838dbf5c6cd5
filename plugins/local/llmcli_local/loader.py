"""Loading weights: GGUF files are dequantized once into a safetensors cache, then every load
reads that cache; loaded models stay in memory for the life of the process.

torch and transformers are imported inside the functions, never at module import. On CPU,
llama-family models whose config the lean path implements (:mod:`llmcli_local.lean`) load
without transformers at all; ``engine="transformers"`` (``-o engine transformers``, or
``LLMCLI_LOCAL_ENGINE=transformers``) forces transformers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcli.errors import ConfigError
from llmcli_local.healing import Vocab, token_bytes_from_tokenizer
from llmcli_local.sources import ModelSource, cache_root

__all__ = ["Loaded", "cache_dir_for", "convert_gguf", "load", "loaded_models", "unload_all"]

#: Written last into a cache directory; without it the directory is an interrupted conversion.
_MARKER = "llmcli-local.json"
#: Names of tokens that end an assistant turn in common chat templates.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<end_of_turn>")


@dataclass
class Loaded:
    """A model ready to run, plus what the runtime precomputes once per tokenizer."""

    model: Any
    tokenizer: Any
    vocab: Vocab
    eos_ids: set[int]
    device: str
    dtype: Any
    directory: Path
    #: Compiled decode steps (CUDA graphs), keyed by static cache length.
    compiled: dict[int, Any] = field(default_factory=dict)
    #: The lean decode step (fastpath.FastDecoder), False when unsupported, None: not built.
    fast: Any = None
    #: "lean" (no transformers: ``model`` is a lean.LeanModel, ``fast`` its decoder) or
    #: "transformers".
    engine: str = "transformers"


_loaded: dict[tuple[str, str, str], Loaded] = {}
_lock = threading.Lock()


def loaded_models() -> dict[tuple[str, str, str], Loaded]:
    return _loaded


def unload_all() -> None:
    _loaded.clear()


def cache_dir_for(path: Path) -> Path:
    """One cache directory per GGUF file version: keyed by its path, size and mtime."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return cache_root() / f"{path.stem}-{key.hexdigest()[:16]}"


def _offline() -> None:
    # Never reach for the model hub: every file we load is local. (huggingface_hub reads
    # this when first imported; ``local_files_only=True`` below covers a hub imported earlier.)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _tensor_progress(bar: Any) -> Iterator[None]:
    """transformers' GGUF loader draws its own per-tensor tqdm bar (ignoring its progress-bar
    switch); route it into ours so a conversion shows one bar, and none off a terminal."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return

    def tensors(iterable: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        items = list(iterable)
        bar.total += len(items)
        bar.refresh()
        for item in items:
            yield item
            bar.update()

    gguf_utils.tqdm = tensors
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def convert_gguf(path: Path, show_progress: bool = True) -> Path:
    """Dequantize ``path`` into its cache directory (once) and return that directory."""
    target = cache_dir_for(path)
    if (target / _MARKER).is_file():
        return target
    _offline()
    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling, then rename: a crash never leaves a half-written cache.
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    interactive = show_progress and sys.stderr.isatty()
    if show_progress and not interactive:
        # Logs and pipes get one line instead of carriage-return redraws.
        print(f"Converting {path.name} into the local cache (once)...", file=sys.stderr)
    # One bar: the tokenizer, each dequantized tensor, then writing the cache.
    bar = tqdm(total=2, desc=f"Converting {path.name} (once)", file=sys.stderr,
               disable=not interactive, unit="step")
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(
                str(path.parent), gguf_file=path.name, local_files_only=True
            )
        bar.update()
        with _quiet_transformers(), _tensor_progress(bar):
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32,
                local_files_only=True,
            )
        # save_pretrained refuses GGUF-loaded models; save the pieces ourselves.
        model_config = model.config
        if hasattr(model_config, "quantization_config"):
            del model_config.quantization_config
        model_config.save_pretrained(work)
        model.generation_config.save_pretrained(work)
        tokenizer.save_pretrained(work)
        state = model.state_dict()
        if getattr(model_config, "tie_word_embeddings", False):
            # Shared storage cannot be saved twice; from_pretrained re-ties it.
            state.pop("lm_head.weight", None)
        save_file(
            {k: v.contiguous() for k, v in state.items()}, str(work / "model.safetensors"),
            metadata={"format": "pt"},
        )
        stat = path.stat()
        (work / _MARKER).write_text(json.dumps(
            {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        ))
        bar.update()
        del model
        if target.exists() and not (target / _MARKER).is_file():
            shutil.rmtree(target, ignore_errors=True)  # debris without its marker
        try:
            os.replace(work, target)
        except OSError:
            # Another process finished the same conversion first; keep theirs.
            if not (target / _MARKER).is_file():
                raise
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"Could not convert {path}: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    return target


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for but no CUDA GPU is available")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _set_cpu_threads() -> None:
    """torch defaults to one thread per physical core, which suits decoding; the user may
    override it with LLMCLI_LOCAL_THREADS (OMP_NUM_THREADS is honoured by torch itself)."""
    import torch

    wanted = os.environ.get("LLMCLI_LOCAL_THREADS", "").strip()
    if wanted.isdigit() and int(wanted) > 0:
        torch.set_num_threads(int(wanted))


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    ids: set[int] = set()
    for candidate in (
        getattr(model.generation_config, "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, list | tuple):
            ids.update(int(c) for c in candidate)
    vocab = tokenizer.get_vocab()
    for name in _END_OF_TURN:
        if name in vocab:
            ids.add(vocab[name])
    return ids


ENGINES = ("auto", "lean", "transformers")


def _pick_engine(requested: str, device: str, directory: Path) -> str:
    if requested == "auto":
        requested = os.environ.get("LLMCLI_LOCAL_ENGINE", "").strip().lower() or "auto"
    if requested not in ENGINES:
        raise ConfigError(f"Unknown local engine {requested!r} (choose from: {', '.join(ENGINES)})")
    if requested == "transformers":
        return "transformers"
    from llmcli_local import lean

    reason = "the lean engine runs on CPU only" if device != "cpu" else lean.why_not(directory)
    if reason is None:
        return "lean"
    if requested == "lean":
        raise ConfigError(f"engine=lean cannot run {directory.name}: {reason}")
    return "transformers"


def load(source: ModelSource, device: str = "auto", show_progress: bool = True,
         engine: str = "auto") -> Loaded:
    """The model for ``source`` on ``device``, loaded once per process. ``engine``: "auto"
    (the lean path where it applies, else transformers), "lean" or "transformers"."""
    with _lock:
        _offline()
        import torch

        resolved = pick_device(device)
        directory = (
            convert_gguf(source.path, show_progress) if source.format == "gguf" else source.path
        )
        chosen = _pick_engine(engine, resolved, directory)
        key = (str(source.path), resolved, chosen)
        if key in _loaded:
            return _loaded[key]
        if resolved == "cpu":
            _set_cpu_threads()
        # bf16 on GPUs (fast and exact enough); fp32 on CPU, where bf16 matmuls are slow
        # on most machines and numerics matter more than memory for small models.
        dtype = torch.bfloat16 if resolved == "cuda" else torch.float32
        read = _read_lean if chosen == "lean" else _read_transformers
        try:
            tokenizer, model = read(directory, resolved, dtype)
        except Exception as exc:
            raise ConfigError(
                f"Could not load {directory}: {type(exc).__name__}: {exc}".splitlines()[0]
            ) from exc
        token_bytes, atomic = token_bytes_from_tokenizer(tokenizer)
        loaded = Loaded(
            model=model, tokenizer=tokenizer, vocab=Vocab(token_bytes, atomic),
            eos_ids=_eos_ids(tokenizer, model), device=resolved, dtype=dtype,
            directory=directory, engine=chosen,
            # The lean engine's decoder is built with the model; transformers' on first use.
            fast=model.decoder if chosen == "lean" else None,
        )
        # Keep one model per device in memory: a conversation reuses it, while switching
        # models does not pile up gigabytes.
        for other in [k for k in _loaded if k[1] == resolved]:
            del _loaded[other]
        _loaded[key] = loaded
        return loaded


def _read_lean(directory: Path, device: str, dtype: Any) -> tuple[Any, Any]:
    from llmcli_local import lean

    return lean.load_tokenizer(directory), lean.load_model(directory, dtype, device)


def _read_transformers(directory: Path, device: str, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=dtype, local_files_only=True
        )
    model.to(device)
    model.eval()
    return tokenizer, model

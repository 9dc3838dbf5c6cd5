"""Loading a model: GGUF files are dequantized once into a safetensors cache, then every load
reads that cache into the backend :func:`llmcli_local.backend.choose_backend` picks; loaded
backends stay in memory for the life of the process (one model per device).

The cache lives in llmcli's cache directory, not the user directory, and is keyed by the
GGUF's content (SHA-256): every user directory, and every copy of the file, shares one
conversion.

torch and transformers are imported inside the functions, never at module import; the lean
backend never imports transformers.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmcli import progress
from llmcli.errors import ConfigError
from llmcli_local.backend import Backend, choose_backend
from llmcli_local.config import RuntimeConfig
from llmcli_local.openmp import release_team
from llmcli_local.sources import ModelSource, cache_root

__all__ = ["cache_dir_for", "convert_gguf", "load", "loaded_models", "pick_device",
           "source_sha256", "unload_all"]

#: Written last into a cache directory; without it the directory is an interrupted conversion.
_MARKER = "llmcli-local.json"
#: Remembered hashes: a file per (path, size, mtime), so a file is read in full only once.
_HASHES = ".sha256"
_CHUNK = 1 << 20

#: Loaded backends by (model path, device, backend name, ``RuntimeConfig.loaded_key()``).
LoadedKey = tuple[str, str, str, str]
_loaded: dict[LoadedKey, Backend[Any]] = {}
_lock = threading.Lock()


def loaded_models() -> dict[LoadedKey, Backend[Any]]:
    return _loaded


def unload_all() -> None:
    _loaded.clear()


def _quiet(stage: str) -> None:
    pass


@contextlib.contextmanager
def _stages(title: str, show_progress: bool) -> Iterator[Callable[[str], None]]:
    if not show_progress:
        yield _quiet
        return
    with progress.stages(title) as show:
        yield show


def source_sha256(path: Path, show_progress: bool = False, root: Path | None = None) -> str:
    """The SHA-256 of ``path``'s content; remembered in the cache (``root``, by default
    :func:`~llmcli_local.sources.cache_root`) by its path, size and modification time, so
    only a new or changed file is read in full."""
    stat = path.stat()
    version = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    root = cache_root() if root is None else root
    memo = root / _HASHES / hashlib.sha256(version.encode()).hexdigest()[:32]
    with contextlib.suppress(OSError, UnicodeDecodeError):
        known = memo.read_text().strip()
        if len(known) == 64:
            return known
    digest = hashlib.sha256()
    with _stages(f"Reading {path.name}", show_progress) as show, path.open("rb") as f:
        done = 0
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if done % (64 * _CHUNK) < _CHUNK:
                show(f"{done * 100 // max(stat.st_size, 1)}%")
    found = digest.hexdigest()
    with contextlib.suppress(OSError):  # only a memo: a read-only cache costs a re-read
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
        tmp.write_text(found)
        os.replace(tmp, memo)
    return found


def cache_dir_for(path: Path, show_progress: bool = False, root: Path | None = None) -> Path:
    """One cache directory per GGUF content, wherever the file is and whoever runs it."""
    root = cache_root() if root is None else root
    return root / source_sha256(path, show_progress, root)[:32]


def _offline() -> None:
    # Never reach for the model hub: every file we load is local. (huggingface_hub reads
    # this when first imported; ``local_files_only=True`` below covers a hub imported earlier.)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@contextlib.contextmanager
def _tensor_progress(show: Callable[[str], None]) -> Iterator[None]:
    """transformers' GGUF loader draws its own per-tensor tqdm bar (ignoring its progress-bar
    switch); count its tensors on our status line instead, so a conversion shows one line."""
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
        for done, item in enumerate(items, 1):
            yield item
            show(f"dequantizing tensors {done}/{len(items)}")

    gguf_utils.tqdm = tensors
    try:
        yield
    finally:
        gguf_utils.tqdm = original


_CANNOT_WRITE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def _cannot_write(directory: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"Cannot write the local model cache {directory}: {exc.strerror or exc}; set "
        "LLMCLI_CACHE_PATH to a writable directory"
    )


def convert_gguf(path: Path, show_progress: bool = True, root: Path | None = None) -> Path:
    """Dequantize ``path`` into its cache directory under ``root`` (once; by default
    :func:`~llmcli_local.sources.cache_root`) and return that directory.

    Progress is one status line on a terminal's stderr, stage by stage with the seconds
    spent (reading the tokenizer, dequantizing tensors n/N, writing the cache), and one
    plain line when stderr is not a terminal."""
    target = cache_dir_for(path, show_progress, root)
    if (target / _MARKER).is_file():
        return target
    _offline()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build in a temporary sibling, then rename: a crash never leaves a half-written
        # cache.
        work = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    except OSError as exc:
        raise _cannot_write(target.parent, exc) from exc
    if show_progress and not progress.is_terminal(sys.stderr):
        # Logs and pipes get one line instead of carriage-return redraws.
        print(f"Converting {path.name} into the local cache (once)...", file=sys.stderr)
    try:
        with _stages(f"Converting {path.name} (once)", show_progress) as show:
            _convert(path, work, show, target.parent)
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
    except OSError as exc:
        if exc.errno not in _CANNOT_WRITE:
            raise ConfigError(f"Could not convert {path}: {exc}".splitlines()[0]) from exc
        raise _cannot_write(target.parent, exc) from exc
    except Exception as exc:
        raise ConfigError(
            f"Could not convert {path}: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _convert(path: Path, work: Path, show: Callable[[str], None], root: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmcli_local.transformers_backend import quiet_transformers

    show("reading the tokenizer")
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name, local_files_only=True
        )
    show("reading the weights")
    with quiet_transformers(), _tensor_progress(show):
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32,
            local_files_only=True,
        )
    show("writing the cache")
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
    (work / _MARKER).write_text(json.dumps({
        "source": str(path.resolve()), "sha256": source_sha256(path, root=root),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }))


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for but no CUDA GPU is available")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _set_cpu_threads(threads: int | None) -> None:
    """torch defaults to one thread per physical core, which suits decoding; the user may
    override it with LLMCLI_LOCAL_THREADS (``RuntimeConfig.threads``; OMP_NUM_THREADS is
    honoured by torch itself)."""
    import torch

    if threads:
        torch.set_num_threads(threads)


def load(source: ModelSource, config: RuntimeConfig | None = None,
         show_progress: bool = True) -> Backend[Any]:
    """The model for ``source`` as ``config`` says (its device, and the backend that
    :func:`~llmcli_local.backend.choose_backend` picks for it; the defaults without one);
    loaded once per process and configuration (the cache options of the transformers
    backend are per call, on the same loaded model)."""
    config = config or RuntimeConfig()
    with _lock:
        _offline()
        resolved = pick_device(config.device)
        directory = (
            convert_gguf(source.path, show_progress, config.cache_root)
            if source.format == "gguf" else source.path
        )
        chosen = choose_backend(config, resolved, directory)
        key = (str(source.path), resolved, chosen, config.loaded_key())
        backend = _loaded.get(key)
        if backend is None:
            backend = _read(chosen, directory, resolved, config)
            # Keep one model per device in memory: a conversation reuses it, while switching
            # models does not pile up gigabytes.
            for other in [k for k in _loaded if k[1] == resolved]:
                del _loaded[other]
            _loaded[key] = backend
            # The load ran on this thread's OpenMP team; the steps run on the scheduler's.
            release_team()
        from llmcli_local.transformers_backend import TransformersBackend

        if isinstance(backend, TransformersBackend):
            return backend.configured(config.kv_cache, config.cuda_graphs)
        return backend


def _read(chosen: str, directory: Path, device: str, config: RuntimeConfig) -> Backend[Any]:
    import torch

    if device == "cpu":
        _set_cpu_threads(config.threads)
    # bf16 on GPUs (fast and exact enough); fp32 on CPU, where bf16 matmuls are slow
    # on most machines and numerics matter more than memory for small models.
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        if chosen == "lean":
            from llmcli_local.lean import backend as lean

            return lean.load(directory, device, dtype, config)
        from llmcli_local.transformers_backend import load as load_transformers

        return load_transformers(directory, device, dtype)
    except Exception as exc:
        raise ConfigError(
            f"Could not load {directory}: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc

"""A model directory with a real model's shape (config, tokenizer, chat template) and seeded
random weights, for timing where the weights cannot travel: the GPU machine reaches nothing,
and SmolLM2's GGUF (93 MB) is over what a call can carry. Speed does not depend on the values
of the weights (the benchmark forces its token counts); the text does, so use such a model
for timing only.

    python tests/bench/shaped_model.py --export DIR      # here: SmolLM2's shape, no weights
    python tests/bench/shaped_model.py OUT --shape DIR   # there: DIR's shape + random weights
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

#: The cache's own marker and the weights stay behind; everything else describes the shape.
_SKIP = ("llmcli-local.json",)


def export(target: Path) -> None:
    from llmcli_local import loader
    from llmcli_local.model import SmolLM2

    converted = loader.convert_gguf(SmolLM2().source().path)
    target.mkdir(parents=True, exist_ok=True)
    for path in converted.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name not in _SKIP:
            shutil.copy(path, target / path.name)


def build(target: Path, shape: Path, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    shutil.copytree(shape, target, dirs_exist_ok=True)
    config = AutoConfig.from_pretrained(str(shape))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(target))
    for name in ("config.json", "generation_config.json"):
        if (shape / name).exists():  # keep the original files, not a re-serialisation
            shutil.copy(shape / name, target / name)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{target}: {config.model_type}, {parameters / 1e6:.1f}M parameters (random)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--export", type=Path, help="write SmolLM2's shape (no weights) here")
    parser.add_argument("--shape", type=Path, help="a directory written by --export")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.export:
        export(args.export)
    elif args.out and args.shape:
        build(args.out, args.shape, args.seed)
    else:
        parser.error("give --export DIR, or OUT --shape DIR")


if __name__ == "__main__":
    main()

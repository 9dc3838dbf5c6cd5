#!/bin/sh
# Run here (no GPU needed), in a session whose task has a GPU machine, before the device check:
# packs into .gpu/ (ignored by git; the run carries it) what the GPU machine cannot fetch:
#   - llmcli, llmcli-local and the test models as wheels (pure Python);
#   - the packages its image lacks, for its Python 3.12, at the versions installed here;
#   - SmolLM2's shape (config, tokenizer, chat template) without its weights: its GGUF
#     (93 MB) is over what a call may carry, so check.sh gives that shape random weights.
# Then: run(command="bash tests/bench/gpu/check.sh", carry=[".gpu"], timeout_s=540).
set -eu
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
rm -rf .gpu
mkdir -p .gpu/whl
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
"$PY" -m pip wheel -q --no-deps -w .gpu/whl . plugins/local tests/testplugin
# Pure-Python or cp312 wheels; the image's own torch, tokenizers, safetensors, numpy,
# huggingface-hub, jinja2, httpx, rich, pytest and hypothesis are used as they are.
NAMES="pydantic pydantic-core annotated-types typing-inspection typing-extensions click
       click-default-group sqlite-utils sqlite-fts4 gguf transformers regex"
PINS=$("$PY" -c 'import importlib.metadata as m, sys
print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $NAMES)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/whl $PINS
"$PY" tests/bench/shaped_model.py --export .gpu/smollm2-shape
du -sh .gpu

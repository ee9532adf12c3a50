# genlab: `make demo` and `make test` work on a fresh machine; both run `make setup` first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.genlab-setup
# data sets, the espeak-ng voice, and Chromium for the web-page tests (driven by Playwright)
APT_PKGS := dataset-fashion-mnist fortunes espeak-ng chromium

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/setup_system.sh
	@bash scripts/setup_system.sh $(APT_PKGS)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(BIN)/genlab demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check genlab tests

bench: setup
	$(BIN)/genlab bench train-lm
	$(BIN)/genlab bench generate

clean:
	rm -rf $(VENV) runs .pytest_cache

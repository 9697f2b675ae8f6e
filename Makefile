# One command to run the app, one to run the tests; each sets up what it needs on a fresh machine.
#   make run    venv + install + collect the default neurons (once) + streamlit run app.py
#   make test   venv + install + ruff + pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed before requirements.txt so that pip keeps it: this pin resolves to the local CPU build on our
# machines and CI, and to PyPI's CUDA build elsewhere. Override with `make run TORCH=torch` to let pip choose.
TORCH ?= torch==2.13.0
PORT ?= 8501

.PHONY: install data run test lint format bench clean

$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	touch $@

install: $(BIN)/.installed

# Collect all 6 layers of the bundled all-MiniLM-L6-v2 over the bundled corpus, unless the database already holds
# its neurons (collected by an earlier `make run`, or by hand with other settings, which `collect` never replaces).
data: install
	@$(BIN)/python -m core neuron --model default --layer 5 --neuron 0 > /dev/null 2>&1 \
		|| $(BIN)/python -m core collect --model default --corpus default

run: data
	$(BIN)/streamlit run app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .

bench: data
	$(BIN)/python bench/collect.py
	$(BIN)/python bench/tokens.py
	$(BIN)/python bench/simulate.py
	$(BIN)/python bench/app.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache test-artifacts

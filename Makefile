# The two Quickstart commands (`make demo`, `make test`) each install what they
# need into .venv first, so they work on a fresh machine with only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.jgraph-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint format clean

# Re-installs when pyproject.toml changes. Editable, so edits need no reinstall;
# tests/test_packaging.py builds the real wheel and checks what it ships.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/jgraph demo

# pytest exits 5 when it collects nothing: that must fail, never pass silently.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

# The edit-test loop: everything except tests marked `slow` (whole demo tour, long
# searches and training runs); `make test` (the README's and CI's command) runs them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests" >&2; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build dist .pytest_cache

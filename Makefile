# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow docs lint install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files re-run the install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-server: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[server]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,server]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-server

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The static report page, then the workbench on loopback (prints its URL; Ctrl-C stops it).
demo: $(VENV)/.installed-server
	$(BIN)/deepscope demo
	$(BIN)/deepscope serve

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Tests marked slow (CI runs them after `make test`).
# Exit status 5 means no test is marked slow yet, which is fine.
test-slow: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS) || test $$? -eq 5

# The documentation site into site/, with strict checks: a broken link, a public name without a docstring or a
# page left out of the navigation fails the build (mkdocs.yml, scripts/docs_hooks.py).
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .ruff_cache

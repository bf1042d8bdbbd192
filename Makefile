# `make train` and `make test` are all the set-up a fresh machine needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install train test check-wheel lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/cmvl train $(ARGS)

# One pytest worker per core (pytest-xdist); a test file's tests stay on one worker, so its module fixtures
# (e.g. the resume tests' reference runs) are built once; --no-loadscope-reorder hands out the files in the order
# tests/conftest.py sorts them (the slowest few first, so no worker ends alone on one). -rs: each skipped test is
# named with its reason (the web page's browser test skips without chromium).
test: $(STAMP)
	$(PY) -m pytest -q -rs -n auto --dist loadfile --no-loadscope-reorder --durations=30 $(ARGS)

# The built wheel, installed into a fresh virtualenv outside the checkout, trains and evaluates (about a minute).
check-wheel: $(STAMP)
	VENV=$(VENV) scripts/check_wheel.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check cmvl tests scripts

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache

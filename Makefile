# The two commands a newcomer needs: `make up` and `make test`.
# Both create (or refresh) .venv from pyproject.toml first; nothing else to set up.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: up test lint bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(VENV)/bin/bus up $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null 2>&1; } \
		|| echo "wrk is missing: the http scenario needs it (Debian: apt-get install wrk)"
	$(VENV)/bin/bus bench $(ARGS)

clean:
	rm -rf $(VENV) .bus .pytest_cache .mypy_cache .ruff_cache

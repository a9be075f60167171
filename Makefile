# The two commands a newcomer needs: `make up` and `make test`.
# Both create (or refresh) .venv from pyproject.toml first; nothing else to set up.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
LOWEST := .venv-lowest
LOWEST_STAMP := $(LOWEST)/.installed

# The suite on two pytest-xdist workers, a test file each at a time: it mostly waits on servers
# and subprocesses, so even 2 cores run it in about half the time. ARGS="-n 0": one process.
WORKERS := -n 2 --dist loadfile

.PHONY: up test test-lowest lint bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(VENV)/bin/bus up $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(WORKERS) $(ARGS)

# The lowest release of each dependency pyproject.toml allows (uv's lowest-direct resolution:
# ours at their floors, theirs the newest that fit), in a venv made afresh whenever
# pyproject.toml changes. uv comes from PyPI through pip, and is handed pip's package sources;
# unsafe-best-match takes the best version across them all, as pip does.
$(LOWEST_STAMP): pyproject.toml
	rm -rf $(LOWEST)
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --disable-pip-version-check 'uv>=0.5'
	$(LOWEST)/bin/uv pip install --quiet --python $(LOWEST)/bin/python \
		--resolution lowest-direct --index-strategy unsafe-best-match \
		$$($(PYTHON) .ci/uv_sources.py $(LOWEST)/bin/python) -e '.[dev]'
	touch $(LOWEST_STAMP)

test-lowest: $(LOWEST_STAMP)
	@echo "lowest versions: $$($(LOWEST)/bin/uv pip freeze --quiet --python $(LOWEST)/bin/python | paste -sd ' ')"
	$(LOWEST)/bin/python -m pytest $(WORKERS) $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null 2>&1; } \
		|| echo "wrk is missing: the http scenario needs it (Debian: apt-get install wrk)"
	$(VENV)/bin/bus bench $(ARGS)

clean:
	rm -rf $(VENV) $(LOWEST) .bus .pytest_cache .mypy_cache .ruff_cache

# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates .venv if missing, installs what it needs (pinned by requirements/constraints.txt), and runs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt

.PHONY: demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo: $(PY) pyproject.toml requirements/constraints.txt
	$(PIP) -e '.[demo]'
	touch $@

$(VENV)/.dev: $(PY) pyproject.toml requirements/constraints.txt
	$(PIP) -e '.[dev]'
	touch $@

demo: $(VENV)/.demo
	$(VENV)/bin/softxent train

# -n 2: one xdist worker per core of the 2-core CI machine; loadgroup keeps each xdist_group (a module with a
# costly module-scoped fixture) on one worker. A plain `pytest` runs in one process, as before.
TEST_WORKERS ?= 2

test: $(VENV)/.dev
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

$(VENV)/.bench: $(VENV)/.dev
	$(PIP) -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench
	$(VENV)/bin/softxent bench --quick

clean:
	rm -rf $(VENV) build src/*.egg-info

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

test: $(VENV)/.dev
	$(PY) -m pytest -q

$(VENV)/.bench: $(VENV)/.dev
	$(PIP) -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench
	$(VENV)/bin/softxent bench --quick

clean:
	rm -rf $(VENV) build src/*.egg-info

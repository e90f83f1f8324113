# Two commands on a fresh machine: `make run` starts the local stack, `make test` runs the suite.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-quick bench train lint clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

artifacts/v1/metadata.json artifacts/v2/metadata.json: | $(STAMP)
	$(PY) -m model_service train

train: $(STAMP)
	$(PY) -m model_service train

run: $(STAMP) artifacts/v1/metadata.json artifacts/v2/metadata.json
	$(PY) -m router.devstack

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-quick: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: $(STAMP) artifacts/v1/metadata.json artifacts/v2/metadata.json
	bash loadtest/bench-deps.sh
	$(PY) -m loadtest.bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) artifacts var

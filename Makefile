# Two commands on a fresh machine: `make run` starts the local stack, `make test` runs the suite.
#
#   make run         set up .venv, train v1 and v2 if needed, start v1 :8001, v2 :8002, router :8000
#                    (DEVSTACK_PORT=9000 for 9000-9002); routing state and tokens persist in var/
#   make test        the whole suite; make test-quick skips the tests marked slow
#   make reset       start over: delete the routing state, rollouts and audit log in var/, keep
#                    .venv, artifacts/ and the admin tokens (var/tokens.env); RESET_TOKENS=1 also
#                    deletes the tokens, so the next `make run` prints new ones
#   make clean       delete .venv, artifacts/ and var/: the next `make run` starts from nothing
#   make help        this text
#
# Python: 3.11 to 3.14. .venv is made with the newest one installed (bin/pythons lists them), or
# with PYTHON=python3.12 (a name or a path); an existing .venv keeps its Python unless PYTHON asks
# for another, and then it is made again (bin/venv-python). VENV=.venv-3.13 keeps a second one.
PYTHON ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help run test test-quick bench train lint reset clean FORCE

# Rewritten only when the venv's Python changes, which makes the packages install again.
$(VENV)/.python: FORCE
	@bin/venv-python $(VENV) $(PYTHON)

$(STAMP): $(VENV)/.python requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

ARTIFACTS := artifacts/v1/metadata.json artifacts/v2/metadata.json artifacts/v3/metadata.json artifacts/v4/metadata.json

$(ARTIFACTS): | $(STAMP)
	$(PY) -m model_service train

train: $(STAMP)
	$(PY) -m model_service train

run: $(STAMP) $(ARTIFACTS)
	$(PY) -m router.devstack

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-quick: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: $(STAMP) $(ARTIFACTS)
	bash loadtest/bench-deps.sh
	$(PY) -m loadtest.bench
	$(PY) -m loadtest.bench_serving
	$(PY) -m loadtest.bench_judge --runs 200

lint: $(STAMP)
	$(VENV)/bin/ruff check .

help:
	@sed -n 's/^#  //p' $(firstword $(MAKEFILE_LIST))

# The state of a running stack is in use: stop `make run` first.
reset:
	@if [ -d var ]; then find var -mindepth 1 -maxdepth 1 \
	    $(if $(filter 1 true yes,$(RESET_TOKENS)),,! -name tokens.env) -exec rm -rf {} +; fi
	@echo "$(if $(filter 1 true yes,$(RESET_TOKENS)),routing state and tokens removed from var/,routing state removed from var/; tokens kept in var/tokens.env)"

clean:
	rm -rf $(VENV) artifacts var

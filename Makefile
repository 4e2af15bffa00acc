# make demo: the main job on embedded defaults.  make test: the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(wildcard scripts/install-deps*.sh)
	./scripts/install-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/provisioner demo

test: setup
	$(BIN)/pytest -W error --strict-markers -p no:cacheprovider --durations=40 $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check provisioner tests bench
	$(BIN)/mypy provisioner

bench: setup
	$(BIN)/python bench/webhooks.py

clean:
	rm -rf $(VENV) build *.egg-info

# Two commands on a fresh machine: `make setup`, then `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup test lint weaviate

setup: $(STAMP) weaviate

# The real Weaviate server, where weaviate-client's embedded mode finds it:
# found (instant), else built with `go install`, else the release download.
weaviate: $(STAMP)
	$(BIN)/python -m pipelines.provision

# Re-runs only when the dependency list changed; a second `make setup` is instant.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[pipelines,dev]'
	@touch $(STAMP)
	@echo "setup done: $(BIN)/python"

test:
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check ib_vectorizer pipelines tests
	$(BIN)/ruff format --check ib_vectorizer pipelines tests

# Two commands on a fresh machine: `make setup`, then `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup test docker-test dist-test lint weaviate chromium

setup: $(STAMP) weaviate chromium

# Debian's chromium, which the search page's browser tests drive through Playwright
# (never a browser Playwright downloads). Instant when it is installed already.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "make setup: chromium is missing; install it as root: apt-get install -y chromium" >&2; exit 1; fi; \
	  $$SUDO apt-get update && $$SUDO apt-get install -y chromium; }

# The real Weaviate server, where weaviate-client's embedded mode finds it: our build found
# (instant), else built from its Go module source with our listen-address edit (seconds with
# Go's build cache, minutes without), else a binary already there is kept, else the release
# download (those two run the local stack behind an API key; see docs/local-stack.md).
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

# The image and the compose stack built and run for real (tests/containers). Provisions
# first, once: Docker Engine and debootstrap (apt), Compose v2 (built with Go), a local
# Python base image and Weaviate's image (no registry is needed), then builds the image.
docker-test: setup
	$(BIN)/python -m tests.containers.provision
	$(BIN)/python -m pytest -q tests/containers

# ib-ingest on a real Flink and a real Spark cluster (2 workers each, started and stopped
# by the tests with ib-runner's code; the engines and Beam's job servers are provisioned
# into ~/.cache/ib-vectorizer/runners on first use). The figures land in dist-report.md.
dist-test: setup
	$(BIN)/python -m pipelines.runners.provision
	IB_DIST_REPORT=dist-report.md $(BIN)/python -m pytest -q tests/dist
	@cat dist-report.md

lint:
	$(BIN)/ruff check ib_vectorizer pipelines tests examples benchmarks
	$(BIN)/ruff format --check ib_vectorizer pipelines tests examples benchmarks

# The packages the GPU machine lacks, packed as .whl/site.tar.xz for
# benchmarks/gpu_check.sh (docs/gpu.md); prints their sizes and what a run sends.
gpu-wheels:
	PYTHON=$(BIN)/python benchmarks/gpu_wheels.sh

# bertserve: `make serve` and `make test` are each one command on a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# onnxruntime for CPU (default) or onnxruntime-gpu: `make setup ORT=gpu`. Never both.
ORT    ?= cpu
ORT_PKG_cpu := onnxruntime==1.32.0
ORT_PKG_gpu := onnxruntime-gpu==1.31.1
ORT_PKG := $(ORT_PKG_$(ORT))
STAMP  := $(VENV)/.setup-$(ORT)
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
# pip's warnings about this machine's extra package indexes are noise; real errors still fail the step.
QUIET  := 2>&1 | { grep -v "^WARNING: Location" || true; }

# BentoML's usage analytics would try to reach the network on every start; bertserve does not phone home.
export BENTOML_DO_NOT_TRACK := true

PORT   ?= 3000
# idle keep-alive connections outlive a load balancer's (60 s): loadtests/steps.py says why
KEEP_ALIVE_S ?= 75
HOST   ?= http://localhost:$(PORT)
LOAD_USERS ?= 16
LOAD_TIME  ?= 60s
LOAD_STEPS ?= 1,4,16,32,64
LOAD_STEP_S ?= 20
LOAD_ARGS  ?=
TASK       ?= classification
ROUTE      ?= /classify
BENCH_HTTP_ARGS ?= --half-peak
PATH_COST_ARGS ?=
FACTOR     ?= 2
SOAK_MINUTES ?= 5

.PHONY: help setup serve test test-fast lint types quickstart loadtest loadtest-one overload soak bench bench-http path-cost clean
.PHONY: base-image image image-gpu image-test

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv with the pinned, known-good dependency set

$(STAMP): requirements.lock pyproject.toml
	@test -n "$(ORT_PKG)" || { echo "ORT must be cpu or gpu, not '$(ORT)'"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	  echo "bertserve needs Python 3.11, and '$(PYTHON)' is missing or another version:"; \
	  echo "  install it (Debian/Ubuntu: apt-get install python3.11 python3.11-venv; or pyenv install 3.11)"; \
	  echo "  or name one: make setup PYTHON=/path/to/python3.11"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned dependency set into $(VENV) (first run: a few minutes)"
	$(PIP) install -r requirements.lock $(QUIET)
	$(PIP) uninstall -y onnxruntime onnxruntime-gpu $(QUIET)
	$(PIP) install --no-deps "$(ORT_PKG)" $(QUIET)
	$(PIP) install --no-deps --no-build-isolation -e . $(QUIET)
	@$(BIN)/python -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
	@rm -f $(VENV)/.setup-*; touch $@

quickstart: setup  ## publish the demo models if no model is published yet
	$(BIN)/bertserve quickstart

# The service starts at once with the models already published; beside it, at a lower CPU priority,
# `bertserve quickstart` publishes the missing demo models (the default encoder first: no training),
# and the service loads each as it lands (it looks at the store every 2 s: BERTSERVE_WATCH_STORE_S).
# Stopping the service stops the quickstart.
serve: setup  ## set up, serve on localhost:$(PORT) at once; the demo models are served as they land
	@nice -n 10 $(BIN)/bertserve quickstart & quickstart=$$!; \
	trap 'status=$$?; kill $$quickstart 2>/dev/null; wait $$quickstart 2>/dev/null; exit $$status' EXIT; \
	BERTSERVE_WATCH_STORE_S=$${BERTSERVE_WATCH_STORE_S:-2} \
	  $(BIN)/bentoml serve --port $(PORT) --timeout-keep-alive $(KEEP_ALIVE_S)

test: setup  ## set up and run the full test suite (no network, no GPU)
	$(BIN)/python -m pytest

test-fast: setup  ## the suite without the slow real-encoder tests
	$(BIN)/python -m pytest -m "not slow"

lint: setup  ## ruff over the whole repository (.ci/run runs it before the tests)
	$(BIN)/ruff check .

types: setup  ## mypy --strict on the files listed in pyproject.toml ([tool.mypy]); .ci/run runs it too
	$(BIN)/python -m mypy

loadtest: setup  ## stepped load test of the service at HOST vs batching off and a pipeline server
	$(BIN)/python loadtests/steps.py --host $(HOST) --users $(LOAD_STEPS) --step-time $(LOAD_STEP_S) $(LOAD_ARGS)

loadtest-one: setup  ## one Locust run (LOAD_USERS, LOAD_TIME) against HOST, markdown summary
	mkdir -p reports/loadtest
	$(BIN)/locust -f loadtests/locustfile.py --headless --host $(HOST) \
	  -u $(LOAD_USERS) -r $(LOAD_USERS) -t $(LOAD_TIME) --only-summary \
	  --csv reports/loadtest/run
	$(BIN)/python loadtests/report.py reports/loadtest/run

overload: setup quickstart  ## serve, then offer FACTOR x the peak of POST /classify: only 200/429/503, recovery
	$(BIN)/python loadtests/stress.py overload --factor $(FACTOR) $(LOAD_ARGS)

soak: setup quickstart  ## serve under steady load for SOAK_MINUTES, resident memory curve (growth < 50 MB)
	$(BIN)/python loadtests/stress.py soak --minutes $(SOAK_MINUTES) $(LOAD_ARGS)

bench-http: setup quickstart  ## HTTP requests/s (wrk) against the offline runtime, same model and inputs (ROUTE=/classify)
	@command -v wrk >/dev/null || { echo "bench-http needs wrk: apt-get install wrk"; exit 2; }
	$(BIN)/python loadtests/http_bench.py --route $(ROUTE) $(BENCH_HTTP_ARGS)

path-cost: setup quickstart  ## the request path's event-loop CPU, in process (ROUTE=/classify; PATH_COST_ARGS=--stub-model)
	$(BIN)/python loadtests/path_cost.py --route $(ROUTE) $(PATH_COST_ARGS)

bench: setup  ## model-level speed: transformers pipeline vs ONNX fp32/int8 (TASK=classification)
	$(BIN)/bertserve bench --task $(TASK)

# Container images (deploy/image/): Docker when `docker info` works, else podman. BASE_IMAGE empty:
# with podman a local Debian + Python base built by debootstrap (no registry needed), with Docker
# BentoML's python:3.11-slim; `default` forces BentoML's, a localhost/... name is built locally.
IMAGE          ?= bertserve
GPU_IMAGE      ?= bertserve-gpu
BASE_IMAGE     ?=
GPU_BASE_IMAGE ?= $(BASE_IMAGE)
GPU_ORT_EXTRAS ?= cuda,cudnn
CONTAINER_BACKEND ?=
INSTALL_TOOLS  ?=
IMAGE_VARIANT  ?= cpu
IMAGE_ENV = BIN=$(BIN) IMAGE=$(IMAGE) GPU_IMAGE=$(GPU_IMAGE) BASE_IMAGE=$(BASE_IMAGE) \
  GPU_BASE_IMAGE=$(GPU_BASE_IMAGE) GPU_ORT_EXTRAS=$(GPU_ORT_EXTRAS) ORT_PKG_GPU=$(ORT_PKG_gpu) \
  CONTAINER_BACKEND=$(CONTAINER_BACKEND) INSTALL_TOOLS=$(INSTALL_TOOLS)

base-image:  ## local Debian + Python base image (INSTALL_TOOLS=1: apt-get podman etc.)
	$(IMAGE_ENV) deploy/image/base-image.sh

image: quickstart  ## serving image (CPU) with the published models inside (bertserve:latest)
	$(IMAGE_ENV) deploy/image/build.sh cpu

image-gpu: quickstart  ## the same with onnxruntime-gpu and CUDA from PyPI (bertserve-gpu:latest)
	$(IMAGE_ENV) deploy/image/build.sh gpu

image-test: setup  ## run the image, call every endpoint, SIGTERM it (IMAGE_VARIANT=gpu)
	$(BIN)/python deploy/image/image_test.py --variant $(IMAGE_VARIANT) --backend "$(CONTAINER_BACKEND)"

clean:  ## remove the environment and local outputs (not the BentoML store)
	rm -rf $(VENV) runs reports .pytest_cache

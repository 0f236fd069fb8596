# mlbridge developer entry points. `make run` brings it up, `make test` tests it.
VENV   ?= $(HOME)/.cache/mlbridge/venv
PY     := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)

.PHONY: install run serve test test-unit test-docker engine-up engine-down images bench protos lint clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)  ## the package with dev and framework extras, into $(VENV)
	$(PY) -m pip install -q -e '.[dev,frameworks]'

run: install  ## install, start Docker, build images, serve the default bridges hardened, show it working
	scripts/run.sh

serve: install  ## serve with the process backend (no Docker, no isolation)
	$(PY) -m orchestrator.cli serve --backend process

test: install  ## everything CI runs: unit tests, then Docker integration and security tests
	scripts/test.sh

test-unit: install  ## tests that need no Docker
	$(PY) -m pytest tests/unit -q

engine-up:
	scripts/docker-engine.sh up

engine-down:
	scripts/docker-engine.sh down

images: install
	$(PY) -m orchestrator.cli images build

bench: install  ## the benchmarks; results go to docs/benchmarks.md
	$(PY) -m benchmarks.overhead
	$(PY) -m benchmarks.observability
	$(PY) -m benchmarks.port
	$(PY) -m benchmarks.docker_startup
	$(PY) -m benchmarks.startup
	$(PY) -m benchmarks.capacity
	$(PY) -m benchmarks.langchain
	$(PY) -m benchmarks.peers.venvs
	$(PY) -m benchmarks.transformers

protos:  ## regenerate committed gRPC code from the .proto files
	$(PY) scripts/gen_protos.py

lint:  ## ruff, and mypy --strict on orchestrator/, runtimes/core and runtimes/wire
	$(PY) -m ruff check .
	$(PY) -m mypy

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info

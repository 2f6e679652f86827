# Agent Service: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# One stamp per content of both requirement files: editing either reinstalls.
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: install demo test test-unit lint services worker beat flower flower-screenshot llm-server init-db clean bench chaos

# A development machine: the runtime plus tests, benchmarks and linters (production installs only
# requirements.txt, as the Dockerfile does).
install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

demo: install
	$(BIN)/python cli.py demo

services:
	bash scripts/ensure-services.sh

# Every tier: unit, integration (real PostgreSQL, Redis, workers) and the short chaos run.
test: install services
	$(BIN)/python -m pytest

# The fast tier alone: no database, broker or worker needed.
test-unit: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

chaos: install services
	CHAOS_SCALE=full $(BIN)/python -m pytest tests/chaos -v

init-db: install
	$(BIN)/python cli.py init-db

bench: install services
	$(BIN)/python -m bench.run $(BENCH_ARGS)

worker: install
	$(BIN)/python cli.py worker

beat: install
	$(BIN)/python cli.py beat

flower: install
	$(BIN)/python cli.py flower

# docs/images/flower-tasks.png, made again by the Flower browser test (a real worker, Flower and Chromium).
flower-screenshot: install services
	FLOWER_SCREENSHOTS=docs/images $(BIN)/python -m pytest tests/integration/test_flower_browser.py

llm-server: install
	$(BIN)/python -m agent_service.devtools.llm_server --port 8099

clean:
	rm -rf .local .pytest_cache

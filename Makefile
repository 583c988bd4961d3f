# The front door. `make help` lists every target with its description.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv is the only tool needed up front. scripts/uv finds it, or installs it into .tools/ (never into the
# system Python, so PEP 668 "externally managed" Pythons work), and picks one Python 3.11+ for .venv.
UV := scripts/uv
PYTEST_ARGS ?=
# e.g. make dev DEV_ARGS='--stations 50 --fresh' (python scripts/dev.py --help lists them)
DEV_ARGS ?=

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: ## Create .venv and install every workspace package from uv.lock
	@$(UV) sync --all-packages --frozen

.PHONY: dev
dev: install ## Run the whole system locally: embedded broker, core (SQLite), ingest, 10 simulated stations
	$(UV) run python scripts/dev.py $(DEV_ARGS)

.PHONY: test
test: install ## Run the test suite (tests needing an absent server are skipped, with the reason)
	$(UV) run pytest $(PYTEST_ARGS)

.PHONY: lint
lint: install ## ruff lint and format check
	$(UV) run ruff check .
	$(UV) run ruff format --check .

.PHONY: format
format: install ## Apply ruff formatting and safe fixes
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

.PHONY: typecheck
typecheck: install ## mypy over all packages
	$(UV) run mypy

.PHONY: migrate
migrate: install ## Apply the database migrations (CORE_DB__URL selects the database)
	$(UV) run alembic upgrade head

# e.g. make bench BENCH_CORE_ARGS='--json var/bench-core.json' (python bench/bench_core.py --help lists them)
BENCH_CORE_ARGS ?=
BENCH_PIPELINE_ARGS ?=

.PHONY: bench
bench: install ## Benchmarks: codec; core's CPU ms per request (full, returned, batch, /health); pipeline (need PostgreSQL, mosquitto)
	$(UV) run python bench/bench_codec.py
	$(UV) run python bench/bench_core.py $(BENCH_CORE_ARGS)
	$(UV) run python bench/bench_pipeline.py $(BENCH_PIPELINE_ARGS)

.PHONY: up
up: ## Start the production-like stack with docker compose (EMQX, PostgreSQL, Redis, core, ingest)
	docker compose -f deploy/compose.yaml up -d --build

.PHONY: down
down: ## Stop the docker compose stack
	docker compose -f deploy/compose.yaml down

.PHONY: clean
clean: ## Remove local state (SQLite files, spools) and caches
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

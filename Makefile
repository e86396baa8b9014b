# Two commands matter: `make demo` and `make test`. Both need only python3 and pip.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY = $(shell ./local/bootstrap.sh)
UV = $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)

.PHONY: help venv demo test lint typecheck unit integration cfn-lint requirements bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

venv: ## create .venv/ from uv.lock (Python 3.13)
	@./local/bootstrap.sh >/dev/null

demo: venv ## run the importer on the embedded local stack with the sample files in events/
	$(PY) -m local.demo

test: lint typecheck cfn-lint ## everything CI runs: ruff, mypy --strict, cfn-lint, all tests
	$(PY) -m pytest

lint: venv ## ruff check and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: venv ## mypy --strict on the Lambda package
	$(PY) -m mypy

cfn-lint: venv ## lint template.yaml
	.venv/bin/cfn-lint template.yaml

unit: venv ## unit tests only
	$(PY) -m pytest tests/unit

integration: venv ## integration tests only (starts the local stack)
	$(PY) -m pytest tests/integration

requirements: venv ## regenerate functions/requirements.txt from uv.lock
	$(UV) export --locked --no-dev --no-emit-project --format requirements-txt --quiet -o functions/requirements.txt

bench: venv ## run the benchmarks (on demand; prints ratios, writes bench/results.json)
	$(PY) -m bench.run

clean: ## remove the environment and build output
	rm -rf .venv .tools .aws-sam build .pytest_cache .mypy_cache .ruff_cache

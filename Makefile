# Two commands matter: `make demo` and `make test`. Both need only python3 and pip.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY = $(shell ./local/bootstrap.sh)
UV = $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
# SAM CLI pins its own boto3 and friends: it runs from a separate tool environment, at the
# versions local/sam-cli.txt pins (local/sam-cli.in names SAM CLI's own).
SAM_CLI = $(UV) tool run --python "$$(readlink -f .venv/bin/python)" --constraints local/sam-cli.txt --from aws-sam-cli sam
# The security scanners likewise, pinned by local/scanners.txt (local/scanners.in names them).
SCANNER = $(UV) tool run --python "$$(readlink -f .venv/bin/python)" --constraints local/scanners.txt

.PHONY: help venv demo test lint typecheck unit integration cfn-lint sam-validate scan package requirements schemas tools-lock bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

venv: ## create .venv/ from uv.lock (Python 3.13)
	@./local/bootstrap.sh >/dev/null

demo: venv ## run the importer on the embedded local stack with the sample files in events/
	$(PY) -m local.demo

test: lint typecheck cfn-lint sam-validate scan ## everything CI runs: ruff, mypy --strict, cfn-lint, sam validate, checkov, bandit, all tests
	$(PY) -m pytest

lint: venv ## ruff check and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: venv ## mypy --strict on the Lambda package and the bulk-import command
	$(PY) -m mypy

cfn-lint: venv ## lint template.yaml
	.venv/bin/cfn-lint template.yaml

sam-validate: venv ## sam validate --lint (SAM CLI in its own uv tool environment, pinned by local/sam-cli.txt)
	SAM_CLI_TELEMETRY=0 $(SAM_CLI) validate --lint --template template.yaml --region us-east-1

scan: venv ## checkov on template.yaml, bandit on functions/ and cli/ (skips are inline, each with its reason)
	$(SCANNER) checkov --file template.yaml --framework cloudformation --compact --quiet --skip-download
	$(SCANNER) bandit --recursive functions cli --quiet

package: venv ## build the Lambda package for python3.13/arm64 without Docker (build/lambda-arm64.zip)
	./local/package.sh

unit: venv ## unit tests only
	$(PY) -m pytest tests/unit

integration: venv ## integration tests only (starts the local stack)
	$(PY) -m pytest tests/integration

requirements: venv ## regenerate functions/requirements.txt from uv.lock
	./local/export-requirements.sh > functions/requirements.txt

schemas: venv ## regenerate the JSON Schemas in schemas/ from the models (a test fails when they drift)
	$(PY) -m local.schemas

tools-lock: venv ## re-pin SAM CLI's and the scanners' dependencies (local/*.txt) from local/*.in
	./local/tools-lock.sh

bench: venv ## run the benchmarks (on demand; prints ratios, writes bench/results/latest.json)
	$(PY) -m bench.run

clean: ## remove the environment and build output
	rm -rf .venv .tools .aws-sam build .pytest_cache .mypy_cache .ruff_cache

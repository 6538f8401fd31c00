# fhirgate — the two commands: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck check bench clean tools

# Browser tests drive Debian's chromium (Playwright's Python package, no downloaded browser);
# the exported Postman collection runs under newman and axe-core checks the pages' accessibility,
# both from the npm registry (tools/package.json).
CHROMIUM ?= /usr/bin/chromium
NEWMAN := tools/node_modules/.bin/newman

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	@echo "fhirgate: the dashboard is at http://127.0.0.1:8000/dashboard/ — its first owner, in another shell:"
	@echo "          $(BIN)/fhirgate admin create-user --email you@example.org   (asks for a password)"
	@echo "fhirgate: sample FHIR data for a first try: $(BIN)/fhirgate fhir load-sample (in another shell)"
	$(BIN)/fhirgate serve

test: $(STAMP) tools
	FHIRGATE_CHROMIUM=$(CHROMIUM) FHIRGATE_NEWMAN=$(abspath $(NEWMAN)) $(BIN)/python -m pytest

tools: $(CHROMIUM) $(NEWMAN)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make: installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "make: the browser tests need Chromium: install it (Debian: sudo apt-get install chromium)" \
			"or run make test CHROMIUM=/path/to/chromium" >&2; exit 1; \
	fi

$(NEWMAN): tools/package.json tools/package-lock.json
	npm ci --prefix tools --no-audit --no-fund --loglevel=error
	touch $(NEWMAN)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python -m bench.token_endpoint

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tools/node_modules

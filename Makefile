# hmedit: `make demo` renders scenes/ with the bundled model; `make test` runs the suite. Both set up .venv first.
# Override the torch pin, e.g. `make demo TORCH="torch==2.13.0+cu128 --index-url URL"`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
OUT ?= out
BIN := $(VENV)/bin
STAMP := $(VENV)/.hmedit-installed
SPEC := $(TORCH) | $(shell cat pyproject.toml | cksum)

.PHONY: setup demo test test-fast lint format bench train-toy clean

setup:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if [ "$$(cat $(STAMP) 2>/dev/null)" != "$(SPEC)" ]; then \
		echo "installing $(TORCH) and hmedit into $(VENV) ..."; \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH) && \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" && \
		echo "$(SPEC)" > $(STAMP); \
	fi

demo: setup
	$(BIN)/hmedit masks scenes/ --out $(OUT)
	@echo "influence maps written under $(OUT)/<scene>/"

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check hmedit tests
	$(BIN)/ruff format --check hmedit tests

format: setup
	$(BIN)/ruff format hmedit tests
	$(BIN)/ruff check --fix hmedit tests

train-toy: setup
	$(BIN)/python -m hmedit.toy.train --run-dir runs/toy --out hmedit/models/weights/toy

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache

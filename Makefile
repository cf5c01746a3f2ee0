# Two entry points: `make demo` runs the seed experiment, `make test` runs every check.
# Each creates .venv when it is missing and installs PyTorch's CPU build before nnreg.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test lint typecheck pytest browser bench clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(TORCH)
	touch $@

$(VENV)/.base: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.dev: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install -e '.[dev,onnx,serve,tensorboard,mlflow]' $(TORCH)
	touch $@ $(VENV)/.base

$(VENV)/.bench: $(VENV)/.dev
	$(BIN)/python -m pip install -e '.[dev,onnx,serve,tensorboard,mlflow,bench]' $(TORCH)
	touch $@

demo: $(VENV)/.base
	$(BIN)/nnreg train

test: lint typecheck pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check
	$(BIN)/ruff format --check

typecheck: $(VENV)/.dev
	$(BIN)/mypy src

pytest: $(VENV)/.dev browser
	$(BIN)/pytest

# The report's browser test opens pages in Chromium, Debian's package; as root, installed here.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is not installed (needs root): the browser test will be skipped"; fi; }

# Peers (skorch, Lightning, ...) come from the `bench` extra; results land in benchmarks/results/.
bench: $(VENV)/.bench
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/threads.py
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

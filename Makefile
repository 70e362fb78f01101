# Two set-up commands that work on a fresh machine (they create .venv and install what they need):
#   make demo   - the main job end to end on the built-in data and model (edgekit run recipes/quickstart.yaml)
#   make test   - the linter (ruff, config in pyproject.toml), then the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# The real FSDD recordings when they sit beside the checkout; otherwise speech is synthesized with espeak-ng.
FSDD ?= $(wildcard ../shared/data/fsdd)
export EDGEKIT_FSDD ?= $(FSDD)
PYTEST_ARGS ?=

.PHONY: demo test example install clean

install: $(VENV)/.installed

# torch is pinned (==2.13.0) in pyproject.toml and installed in the same pip command as what depends on it,
# so pip takes the CPU build instead of a multi-GB CUDA one.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/edgekit doctor
	$(VENV)/bin/edgekit run recipes/quickstart.yaml

# A user's own model and data (examples/own-model): what the user brings (files + a trained model), then the run.
example: install
	$(PY) examples/own-model/prepare.py
	$(VENV)/bin/edgekit run examples/own-model/recipe.yaml

test: install
	$(VENV)/bin/ruff check edgekit tests benchmarks examples
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

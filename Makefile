# The README's two commands are `make demo` and `make test`; each builds its own virtual environment.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-local-dev

.PHONY: demo demo-rag test test-fast test-core lint bench venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, then torchaudio against it: the order verified to resolve on CPU machines
	$(BIN)/pip install --quiet torch==2.9.1 torchvision==0.24.1
	$(BIN)/pip install --quiet -e '.[local,demo,dev,rag,rag-dense]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m wrapper.demo

demo-rag: $(STAMP)
	$(BIN)/python -m wrapper.demo_rag

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e"

# The core package alone (no extra but `test`) in its own venv: the fast suite passes, extra-bound tests skip.
test-core:
	test -x .venv-core/bin/python || $(PYTHON) -m venv .venv-core
	.venv-core/bin/pip install --quiet '.[test]'
	cd /tmp && $(CURDIR)/.venv-core/bin/python -m pytest $(CURDIR)/tests -m "not e2e" -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check wrapper tests bench compose
	$(BIN)/ruff format --check wrapper bench compose
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-core .pytest_cache .mypy_cache .ruff_cache

# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# fastmri declares torchvision, and torchmetrics (imported by Lightning)
# imports it whenever it is installed, so torch and torchvision must be a
# matching pair: PyPI's torchvision 0.28 does not load beside the CPU-only
# torch 2.13 build. These two releases match (and are what `pip install
# fastmri` resolves to under this machine's pip cap).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?= --jobs 2

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m fastmri_growth.cli.demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info demo_output bench_output .pytest_cache

# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch. torchvision is never imported by fastmri or by us, but
# fastmri declares it; pinning the release that matches this torch keeps pip
# from replacing the CPU build with a multi-GB CUDA one.
TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

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
	$(BIN)/python -m fastmri_growth.demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) *.egg-info demo_output bench_output .pytest_cache

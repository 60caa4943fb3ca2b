# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv the first time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# OpenMP threads that spin-wait collapse throughput on a small, shared CPU machine; passive waiting costs little.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test bench lint docs-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,dali,timm]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/feed-fast demo

# The suite in TEST_WORKERS pytest-xdist processes (default: the cores, at most 4), each running whole files (module
# fixtures once). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# A GPU: the full grid -> benchmarks/results/. A CPU: the smoke grid, the triton and hybrid rows in Triton's
# interpreter (labelled [triton-interpreter]) -> benchmarks/results/local/ (ignored). See docs/benchmarks.md.
bench: $(STAMP)
	$(PY) benchmarks/bench_feed_loss.py

docs-check: $(STAMP)  # every command the README and docs/ show parses, with valid configs
	$(PY) -m pytest -q tests/test_docs_commands.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Every target installs what it needs: a fresh machine needs only Python 3.11 and pip.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# pip arguments that install torch, split on spaces and passed one by one (each quoted, so a
# `<` or `>` in a version range is no shell redirection). pip does not look at the hardware:
# from PyPI, torch for Linux x86_64 is the CUDA build (several GB). For the CPU-only wheel:
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# and for a given CUDA: ... --index-url https://download.pytorch.org/whl/cu126
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
SEEDS ?= 10000

.PHONY: install train test lint typecheck unit soak chaos bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(foreach word,$(TORCH_SPEC),'$(word)')
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m jobs.train --out runs/default --overwrite

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy consensus paramserver workers jobs

test: lint typecheck
	$(PY) -m pytest -q

unit: $(STAMP)
	$(PY) -m pytest -q -m "unit or sim"

soak: $(STAMP)
	RAFTPS_SOAK_SEEDS=$(SEEDS) $(PY) -m pytest -q -m soak -p no:cacheprovider --timeout 7200

chaos: $(STAMP)
	$(PY) -m pytest -q -m chaos

bench: $(STAMP)
	$(PY) -m bench.raft --quick
	$(PY) -m bench.train --quick
	$(PY) -m bench.scale --quick
	$(PY) -m bench.direct_io --trials 3
	$(PY) -m bench.goodput --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

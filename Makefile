# Two set-up commands (README): `make run` and `make test`; each creates and fills its own virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BENCH := $(VENV)/bin/bench

.PHONY: run test test-all test-nodgl install benchmark-env clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[test]'
	# The published element embeddings (published:<name>) are data files inside the elementembeddings wheel;
	# crysbench reads them without importing the package, so its plotting and dimensionality-reduction
	# dependencies are left out (--no-deps) and Python 3.10 gets the same files (--ignore-requires-python).
	$(PY) -m pip install --no-deps --ignore-requires-python 'elementembeddings==0.8.0'
	touch $@

install: $(VENV)/.installed

# The main job on the bundled sample: pretrain, sweep on Ray Tune, write the leaderboard.
run: $(VENV)/.installed
	$(BENCH) run --suite smoke --encoder cgcnn --objective crysatom --controls --store runs/smoke --out runs/smoke/leaderboard

# Fast tests (under ~10 minutes on 2 cores). pytest exits 5 when it collected nothing: that is a failure here.
test: $(VENV)/.installed
	@$(VENV)/bin/pytest -m "not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# Everything, slow tests included (CI).
test-all: $(VENV)/.installed
	@$(VENV)/bin/pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The DGL-free stack (pyproject's Python 3.13 markers: current torch, numpy 2, no DGL) in its own venv, fast
# tests only: every encoder on the plain-torch message passing (bench.graphops), the DGL interop tests skipped.
# the first candidate that really is 3.13 (a pyenv shim for a version that is not active only prints an error)
PYTHON313 ?= $(shell for p in $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python) $$(command -v python3.13); do \
	"$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null && { echo "$$p"; break; }; done)
VENV313 ?= .venv313

$(VENV313)/.installed: pyproject.toml
	@test -n "$(PYTHON313)" || { echo "no Python 3.13 found: set PYTHON313=/path/to/python3.13"; exit 1; }
	$(PYTHON313) -m venv $(VENV313)
	$(VENV313)/bin/python -m pip install -q --upgrade pip
	$(VENV313)/bin/python -m pip install -q -e '.[test]'
	$(VENV313)/bin/python -m pip install -q --no-deps --ignore-requires-python 'elementembeddings==0.8.0'
	touch $@

test-nodgl: $(VENV313)/.installed
	@$(VENV313)/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('dgl') is not None)" \
		|| { echo "dgl is installed in $(VENV313): not the DGL-free stack"; exit 1; }
	@$(VENV313)/bin/pytest -m "not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# Peers for benchmarks/ (alignn's DGL graph builder and model); never a runtime dependency. --no-deps: alignn's
# own pins would replace torch/dgl/numpy. alignn.graphs imports only runtime dependencies (jarvis-tools, pandas,
# torch, dgl, tqdm); alignn.models.alignn also needs pydantic-settings (pure Python).
benchmark-env: $(VENV)/.installed
	$(PY) -m pip install --no-deps 'alignn==2026.8.11'
	$(PY) -m pip install 'pydantic-settings>=2'
	$(PY) -c "import alignn.graphs, alignn.models.alignn"

clean:
	rm -rf $(VENV) $(VENV313) build *.egg-info

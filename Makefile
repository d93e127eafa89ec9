# GEOPAK book. Two commands do everything on a fresh machine:
#   make book     build the venv if missing, build the demo dataset if missing, run every
#                 notebook headless with params/demo.yaml, write reports/demo/*.html and the site reports/demo/site/
#   make test     build the venv if missing, run the library tests and the smoke book (in temporary folders)
# and a third opens the book in JupyterLab, as the last `make book` of that profile left it:
#   make lab [PROFILE=demo]
PYTHON  ?= python3
PROFILE ?= demo
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Tests never touch a model hub, and figures are not drawn on a screen.
TESTENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0

.PHONY: help venv book test test-fast nbval lab benchmark benchmark-scale clean
help:
	@echo "make book [PROFILE=demo]   run the whole book (demo dataset): reports in reports/PROFILE/, the site in reports/PROFILE/site/index.html"
	@echo "make test                  run all tests (library + smoke book)"
	@echo "make test-fast             library tests only (skips the smoke book)"
	@echo "make nbval [PROFILE=demo]  nbval on the notebooks with PROFILE's values injected (its run must exist)"
	@echo "make lab [PROFILE=demo]    open the book in JupyterLab as the last run of PROFILE left it"
	@echo "make benchmark [ARGS=...]  run the speed benchmarks (ARGS=--record adds them to docs/performance.md)"
	@echo "make benchmark SCALE=1     also the cost curve 1k-100k images (benchmarks/bench_scale.py; hours on 2 CPUs)"

# torch and torchvision come from this machine's disk via pip (uv does not look there); the
# rest installs with uv in seconds. The stamp makes the step run once per requirements change.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $$(grep -E '^(torch|torchvision)==' requirements.txt) 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import torch, torchvision" || { echo "torch/torchvision failed to install"; exit 1; }
	$(BIN)/pip install -q --disable-pip-version-check uv 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.txt -e .
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name geopak --display-name "GEOPAK (.venv)" >/dev/null
	@touch $@

venv: $(STAMP)

book: $(STAMP)
	$(BIN)/geopak book $(PROFILE)

# Library tests, then the smoke book (papermill), then nbval over the notebooks with the smoke values and a
# run, dataset and cache of their own in a temporary folder (geopak params --under): nothing of it lands in
# the repository (docs/decisions/config.md). Both parts run; the first failure's status is make's.
test: $(STAMP)
	@tmp=$$(mktemp -d -t geopak-test.XXXXXX) && trap 'rm -rf "$$tmp"' EXIT; \
	$(TESTENV) $(BIN)/python -m pytest tests; rc=$$?; \
	$(BIN)/geopak params smoke --under "$$tmp" --notebooks-to "$$tmp/nbval" >/dev/null && \
	$(TESTENV) $(BIN)/python -m pytest -c pyproject.toml --nbval-lax "$$tmp/nbval" || { s=$$?; [ $$rc -ne 0 ] || rc=$$s; }; \
	exit $$rc

# nbval on the notebooks with a profile's values injected (PROFILE, default demo); the profile's run must exist
# (`geopak book PROFILE` first). Copies go to .tmp/nbval/PROFILE/ (docs/decisions/papermill.md).
nbval: $(STAMP)
	$(BIN)/geopak params $(PROFILE) --notebooks-to .tmp/nbval/$(PROFILE)
	$(TESTENV) $(BIN)/python -m pytest --nbval-lax .tmp/nbval/$(PROFILE)

test-fast: $(STAMP)
	$(TESTENV) $(BIN)/python -m pytest tests -m "not book"

# JupyterLab on the executed notebooks of the last run of PROFILE (runs/PROFILE/notebooks/: outputs and
# injected parameters kept); with no run yet, one line says which command makes one (geopak_lib/book/lab.py).
lab: $(STAMP)
	$(BIN)/python -m geopak_lib.book.lab $(PROFILE)

# CPU: the small profile, under 15 minutes on 2 cores; a GPU machine runs the full profile.
# ARGS=--record appends the figures to docs/performance.md; ARGS=--help lists the options.
benchmark: $(STAMP)
	$(TESTENV) $(BIN)/python -m benchmarks.run_all $(ARGS)
	@if [ -n "$(SCALE)" ]; then $(MAKE) --no-print-directory benchmark-scale; fi

# The cost curve of every stage, 1k to 100k images (encoder stages to 30k); SCALE_ARGS=--record
# writes its table and plot into docs/performance.md. Not part of the default run: hours on 2 CPUs.
benchmark-scale: $(STAMP)
	$(TESTENV) $(BIN)/python -m benchmarks.bench_scale $(SCALE_ARGS)

clean:
	rm -rf runs reports/*/ .pytest_cache

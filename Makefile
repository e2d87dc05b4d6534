# LaViC — every target does its own set-up through `install`, which is idempotent.
PYTHON ?= python3
VENV ?= .venv
# Installed first and explicitly: here it takes the CPU wheel on disk; on a GPU machine the
# ordinary CUDA build. Override e.g. `make install TORCH_SPEC="torch==2.13.* --index-url ..."`.
TORCH_SPEC ?= torch==2.13.*
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lavic-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast lint format bench reproduce tiny clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[all]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/lavic demo --output_dir runs/demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser"

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

format: install
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

bench: install
	$(PY) bench/run_all.py --output runs/bench/results.json

# Build (once) the pretrained `tiny` backbone into the user cache; `make demo` does it on demand.
tiny: install
	$(VENV)/bin/lavic build-tiny

# The paper's setting on a GPU machine with internet (docs/reproduce.md): the Hub is needed.
reproduce: install
	HF_HUB_OFFLINE=0 bash configs/reproduce.sh

clean:
	rm -rf runs .pytest_cache .ruff_cache

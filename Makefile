# Front door: `make train` and `make test` work on a fresh clone (package registries only).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.xforget-installed

.PHONY: setup train test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch pinned first: 2.13.0 is the CPU build that lies on disk here (plain `torch` would pull CUDA)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,data,wandb,tensorboard,harness]'
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/xforget-train $(ARGS)

test: $(STAMP)
	$(VENV)/bin/lint-imports  # the import rules of pyproject.toml: layers, no circles
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) scripts/bench_attention.py

clean:
	rm -rf $(VENV) outputs runs .pytest_cache

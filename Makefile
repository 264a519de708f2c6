# Front door: `make train` and `make test` work on a fresh clone (package registries only).
# Each target installs what it needs, once (a stamp file per environment; a changed pyproject.toml
# installs again): `make train` torch + xforget alone; `make test` adds the test extras.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TRAIN_STAMP := $(VENV)/.xforget-train
TEST_STAMP  := $(VENV)/.xforget-test
# what the test suite imports beyond the main job: pytest, x-transformers and import-linter (dev), tokenizers /
# datasets / pyarrow (data), the trackers (wandb, tensorboard) and lm-evaluation-harness (harness)
TEST_EXTRAS := dev,data,wandb,tensorboard,harness

.PHONY: setup setup-train setup-test train test bench clean

$(TRAIN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch pinned first: 2.13.0 is the CPU build that lies on disk here (plain `torch` would pull CUDA)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(TRAIN_STAMP)

$(TEST_STAMP): $(TRAIN_STAMP)
	$(PY) -m pip install -q -e '.[$(TEST_EXTRAS)]'
	touch $(TEST_STAMP)

setup-train: $(TRAIN_STAMP)
setup-test: $(TEST_STAMP)
setup: setup-test

train: $(TRAIN_STAMP)
	$(VENV)/bin/xforget-train $(ARGS)

test: $(TEST_STAMP)
	$(VENV)/bin/lint-imports  # the import rules of pyproject.toml: layers, no circles
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(PY) scripts/bench_attention.py

clean:
	rm -rf $(VENV) outputs runs .pytest_cache

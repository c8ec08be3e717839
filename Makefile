# `make run`: fresh clone -> .venv -> the offline demo.  `make test`: fresh clone -> .venv -> lint + tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) train.py

# The throughput benchmark (minutes; not part of the tests): BENCH_ARGS="--archs resnet50 ..." to change it.
bench: $(STAMP)
	$(PY) -m s3l.bench $(BENCH_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check s3l tests train.py

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf outputs multirun .pytest_cache

# `make run`: fresh clone -> .venv -> the offline demo.  `make test`: fresh clone -> .venv -> lint + tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint install bench bench-gpu bench-gpu-data clean

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

# The prepared one-GPU benchmark, at most 8 minutes (docs/benchmarks.md, "On a GPU", has the command for a
# lent GPU machine); BENCH_ARGS="--tiny" runs its code on the CPU in seconds.
bench-gpu: $(STAMP)
	$(PY) -m s3l.bench.gpu $(BENCH_ARGS)

# What a GPU machine needs beside the repo, which is all it gets: the CUB subset and the pure-Python
# packages its image lacks (hydra-core, omegaconf, antlr4), in the git-ignored bench_data/ (about 50 MB).
CUB_SUBSET := ../shared/datasets/cub_200_2011_10cls/CUB_200_2011
bench-gpu-data: $(STAMP)
	rm -rf bench_data && mkdir -p bench_data/CUB_200_2011 bench_data/site-packages
	cp -r $(CUB_SUBSET)/images $(CUB_SUBSET)/*.txt bench_data/CUB_200_2011/
	$(PY) -c "import os, shutil, antlr4, hydra, omegaconf; [shutil.copytree(os.path.dirname(m.__file__), \
	    'bench_data/site-packages/' + m.__name__, ignore=shutil.ignore_patterns('__pycache__')) \
	    for m in (antlr4, hydra, omegaconf)]"
	du -sh bench_data

lint: $(STAMP)
	$(PY) -m ruff check s3l tests train.py

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf outputs multirun .pytest_cache

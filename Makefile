# The two commands a newcomer needs:  `make demo`  and  `make test`.  Both create .venv themselves.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU wheel (on disk on the project's machines). On a GPU machine: make TORCH="torch==2.13.0 --index-url <your CUDA index>"
TORCH  ?= torch==2.13.0

# the GPU machine's python (torch + CUDA there); here: make gpu-check GPU_PY=.venv/bin/python ARGS=--cpu
GPU_PY ?= python3

.PHONY: setup demo test test-fast lint bench gpu-bundle gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,server]'
	touch $@

demo: setup
	$(PY) -m orchestration.sweep --model ddpm

# the whole suite (what CI runs, via .ci/run), on two workers: tests/conftest.py groups what must share one
# (the 15 slowest tests are listed at the end: where the 10-minute budget goes)
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15

# the edit loop, under 3 minutes: no sweep, Ray, worker process, cluster or browser (the tests marked slow)
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: setup
	$(PY) -m data.bench
	$(PY) -m models.bench

# here, online: the wheels the GPU machine lacks, into gpu-bundle/ (git-ignored; carry it with the tree, <= 64 MiB)
gpu-bundle: setup
	$(PY) infra/gpu_bundle.py

# there, in the repository root: install the bundle, pytest -m gpu, the study-scale benchmark, a smoke sweep;
# writes $$OUT/gpu-check.json and $$OUT/gpu-check.log within 8 minutes (ARGS=--cpu: the same steps at CPU size)
gpu-check:
	$(GPU_PY) infra/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

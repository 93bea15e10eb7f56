# gdet — set-up, tests and the demo. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.14.1 torchvision==0.29.1
# Where the pinned pair comes from: PyPI's default (CUDA) build unless set, e.g.
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU-only build on a machine without a GPU.
TORCH_INDEX ?=
STAMP  := $(VENV)/.gdet-installed
# Extra `gdet demo` options, e.g. DEMO_ARGS="--weights runs/det_shared/last.pth" (a detector of either mode).
DEMO_ARGS ?=

.PHONY: install test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) setup.py
	$(PY) -m pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q tests

demo: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(VENV)/bin/gdet demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) tools/bench.py all

clean:
	rm -rf build *.egg-info .pytest_cache demo_out

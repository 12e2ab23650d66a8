# make demo  - set up the venv (first time) and build the demo version under ./datasets
# make demo-interleaved - the same, for the interleaved demo (documents from an embedded WARC)
# make test  - set up the venv (first time) and run the test suite
VENV ?= .venv
PYTHON ?= python3
export NO_ALBUMENTATIONS_UPDATE = 1
export WANDB_MODE = disabled
export HF_HUB_OFFLINE = 1

$(VENV)/.installed: pyproject.toml constraints.txt setup.py vlcurate/interleave/_speedups.c
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q "pip==26.3"
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

.PHONY: demo demo-interleaved test lint
demo: $(VENV)/.installed
	$(VENV)/bin/vlcurate demo --out datasets

demo-interleaved: $(VENV)/.installed
	$(VENV)/bin/vlcurate demo --interleaved --out datasets

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/hadolint Dockerfile Dockerfile.gpu

# Set-up and the two main jobs. `make run` runs the pipeline on the bundled real patients
# (data/sunnybrook-subset, read as DICOMs; `make run DATA=synthetic` on generated data instead);
# `make test` runs the test suite. Both create .venv with Python 3.10 and the lock first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_VERSION := $(shell cat .python-version)
# pyenv honours .python-version; otherwise a python3.10 on PATH will do.
PYTHON ?= $(shell pyenv which python 2>/dev/null || command -v python3.10)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# What `make run` trains on: sunnybrook (the bundled real patients) or synthetic (generated).
DATA ?= sunnybrook
SUNNYBROOK := data/sunnybrook-subset
DATA_ROOT ?= data/synthetic
OUTPUT_ROOT ?= outputs
RUN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install run test lint bench data clean distclean

help:
	@echo "make run    run the whole pipeline on the bundled real patients ($(SUNNYBROOK));"
	@echo "            make run DATA=synthetic on generated slices ($(DATA_ROOT)); RUN_ARGS='...' adds lvseg run options"
	@echo "make test   run the test suite"
	@echo "make lint   check the code with ruff (ruff.toml)"
	@echo "make bench  run the benchmarks (under 20 min on 2 CPUs), print the figures as one JSON object"
	@echo "make install / data / clean / distclean"

install: $(INSTALLED)

$(INSTALLED): requirements.lock setup.py .python-version
	@test -n "$(PYTHON)" || { echo "Python $(PYTHON_VERSION) not found: install it (pyenv install $(PYTHON_VERSION)) or set PYTHON=/path/to/python3.10"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' || { echo "$(PYTHON) is not Python 3.10 (TFX 1.16 needs it)"; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==24.2
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(INSTALLED)

data: $(DATA_ROOT)/manifest.json

$(DATA_ROOT)/manifest.json: | $(INSTALLED)
	$(BIN)/lvseg data synth --out $(DATA_ROOT)

ifeq ($(DATA),sunnybrook)
run: $(INSTALLED)
	$(BIN)/lvseg run --dicom-root $(SUNNYBROOK)/dicoms --contour-root $(SUNNYBROOK)/contourfiles \
		--link $(SUNNYBROOK)/link.csv --output-root $(OUTPUT_ROOT) $(RUN_ARGS)
else ifeq ($(DATA),synthetic)
run: $(INSTALLED) $(DATA_ROOT)/manifest.json
	$(BIN)/lvseg run --data-root $(DATA_ROOT) --output-root $(OUTPUT_ROOT) $(RUN_ARGS)
else
run:
	@echo "DATA must be sunnybrook (the bundled real patients) or synthetic, not '$(DATA)'"; exit 2
endif

test: $(INSTALLED)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .

# Each figure is a ratio against the plain way of doing the same work, measured in the same run.
# Logs and latest.json under $(OUTPUT_ROOT)/benchmarks.
bench: $(INSTALLED) $(DATA_ROOT)/manifest.json
	$(BIN)/python benchmarks/run_all.py --data-root $(DATA_ROOT) --out $(OUTPUT_ROOT)/benchmarks \
		--pushed-models $(OUTPUT_ROOT)/serving/lv_segmentation

clean:
	rm -rf $(OUTPUT_ROOT)

distclean: clean
	rm -rf $(VENV) $(DATA_ROOT) *.egg-info  # never the bundled data/sunnybrook-subset

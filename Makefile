# tarproc: `make demo` runs the main job on generated data, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test bench man demo lint clean imagemagick

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# ImageMagick for the tests that run `convert`; installed when we can, else those tests skip
imagemagick:
	@./.ci/imagemagick >/dev/null || true

test: install imagemagick
	$(BIN)/pytest -q tests --ignore=tests/bench

bench: install imagemagick
	$(BIN)/pytest tests/bench --benchmark-enable --benchmark-columns=min,median,mean,ops,rounds -p no:cacheprovider --benchmark-json=.benchmarks/latest.json -s

man: install
	$(BIN)/python -m tarproc.cli.man man

demo: install imagemagick
	$(BIN)/python tests/makeshards.py --samples 200 demo/imagenet_train-0000.tgz
	PATH=$(BIN):$$PATH bash examples/demo.sh demo

lint: install
	$(BIN)/pip install -q ruff
	$(BIN)/ruff check tarproc tests

clean:
	rm -rf $(VENV) demo .pytest_cache .benchmarks

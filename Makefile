# tarproc: `make demo` runs the main job on generated data, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the tests mostly wait on child processes and servers: two pytest-xdist
# workers cut the suite's wall time by about 40% on two cores (TEST_WORKERS=0: one process)
TEST_WORKERS ?= 2
# man pages in the venv: man-db finds $(VENV)/share/man from $(VENV)/bin on PATH
# (an editable install does not install setup.cfg's data files)
MANDIR := $(VENV)/share/man/man1
MANPAGES := $(patsubst man/%,$(MANDIR)/%,$(wildcard man/*.1))

.PHONY: install test test-engines image bench man demo lint clean imagemagick

install: $(STAMP) $(MANPAGES)
	@./.ci/debian-packages >/dev/null 2>&1 || true
	@# byte-code, as a non-editable install has (none is written where PYTHONDONTWRITEBYTECODE is set)
	@$(BIN)/python -m compileall -q tarproc >/dev/null

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(MANDIR)/%.1: man/%.1 $(STAMP)
	@mkdir -p $(MANDIR)
	cp $< $@

# ImageMagick for the tests that run `convert`; installed when we can, else those tests skip
imagemagick:
	@./.ci/imagemagick >/dev/null || true

test: install imagemagick
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m 'not engines' tests --ignore=tests/bench

# the tests marked `engines`: the container image built and run with podman
# (tests/container.py), Dask workers that share nothing (tests/daskcluster.py)
test-engines: install imagemagick
	@./.ci/container-tools >/dev/null || true
	$(BIN)/pytest -q -n 0 -m engines tests --ignore=tests/bench

# the container image (Containerfile) with podman, buildah or docker; the
# build's RUN steps use the host's network (never a bridge this machine would get)
CONTAINER ?= $(firstword $(shell command -v podman buildah docker 2>/dev/null))
IMAGE ?= tarproc:latest
BASE ?= docker.io/library/python:3.11-slim-bookworm
image:
	$(CONTAINER) build --network host --build-arg BASE=$(BASE) -f Containerfile -t $(IMAGE) .

bench: install imagemagick
	$(BIN)/pytest tests/bench --benchmark-enable --benchmark-columns=min,median,mean,ops,rounds -p no:cacheprovider --benchmark-json=.benchmarks/latest.json -s

# man pages, setup.cfg's tool lists and bin/ launchers, from tarproc.cli.TOOLS
man: $(STAMP)
	$(BIN)/python -m tarproc.cli.man man
	@mkdir -p $(MANDIR) && cp man/*.1 $(MANDIR)/

demo: install imagemagick
	$(BIN)/python tests/makeshards.py --samples 200 demo/imagenet_train-0000.tgz
	PATH=$(BIN):$$PATH bash examples/demo.sh demo

lint: install
	$(BIN)/pip install -q ruff
	$(BIN)/ruff check tarproc tests

clean:
	rm -rf $(VENV) demo .pytest_cache .benchmarks

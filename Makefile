# Set-up and entry points. `make demo` and `make test` install what is missing first:
# the system packages FFCV builds against, a .venv, and kdstore with its dev and lightning extras.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdstore-installed
SYS_PKGS := pkg-config libturbojpeg0-dev libopencv-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= demo-out
PYTEST_ARGS ?=

.PHONY: setup sysdeps demo test test-slow test-fast lint docs clean

setup: $(STAMP)

# System packages: installed only when dpkg says one is missing.
sysdeps:
	@missing=""; for p in $(SYS_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

# The venv is (re)built only when pyproject.toml changes.
$(STAMP): pyproject.toml | sysdeps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,lightning,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdstore demo --out $(DEMO_DIR)

# Two workers: most tests wait on subprocesses, FFCV's writer or files (see the README's Tests).
# The heavy tier (signals sent to caches, small disks filled) is `make test-slow`.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -m "not heavy" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -m heavy $(PYTEST_ARGS)

# The fast tier: no trained digits teacher, no subprocesses (under a minute on 2 cores).
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The documentation as a site (site/): docs/ plus the README as its first page (its links made
# the site's), its figures drawn from the library (docs/figures.py), built strictly: a broken
# link or a public name without a docstring fails.
docs: $(STAMP)
	$(PY) docs/figures.py
	sed -e 's#](docs/#](#g' -e 's#](benchmarks/RESULTS.md)#](results.md)#g' README.md > docs/index.md
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(DEMO_DIR) .pytest_cache

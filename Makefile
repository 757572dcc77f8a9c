# The two commands of the README. Both create .venv when missing and install the package.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test demo install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

# Reinstall when setup.py changes. torch 2.13.0 is installed first and alone: its CPU
# wheel is available offline; letting the resolver pick torch would download CUDA builds.
$(STAMP): setup.py | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Files run in collection order (tests/conftest.py puts the longest first); xdist's default
# would start the files with the most tests first and leave the long single tests to the end.
test: $(STAMP)
	$(PY) -m pytest tests -q -n 2 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m synthpre_jax.demo

clean:
	rm -rf $(VENV) build *.egg-info

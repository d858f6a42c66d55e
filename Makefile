# The two commands of the README: `make demo` and `make test`.
# Both create the virtual environment in $(VENV) when missing and install the package into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.oes-mri-installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,ray,siemens,deepinv]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m oes_mri.recon --accel 4

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf recon_out .pytest_cache

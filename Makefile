# Two commands on a fresh machine: `make run` (a working demo) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DEMO   ?= var/demo

.PHONY: run test bench clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mailstack needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

run: $(VENV)/.installed
	$(PY) scripts/demo.py $(DEMO)
	exec $(VENV)/bin/mailstack -c $(DEMO)/mailstack.toml serve

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) bench/auth.py
	$(PY) bench/store.py
	$(PY) bench/imap.py
	$(PY) bench/smtp.py
	$(PY) bench/outbound.py
	$(PY) bench/filters.py
	$(PY) bench/sieve.py

clean:
	rm -rf $(VENV) var .pytest_cache *.egg-info

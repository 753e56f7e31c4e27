# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install test demo bench lint

install:
	bash .ci/install

test: install
	$(PYTHON) -m pytest -q

# The demo needs the package only (no test or bench extras).
demo:
	bash .ci/install ""
	$(PYTHON) -m simulator.demo

bench: install
	$(PYTHON) -m bench

lint:
	$(PYTHON) -m ruff check iot_guard simulator tests bench
	$(PYTHON) -m mypy

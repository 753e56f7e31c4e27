# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install native clean-native test demo bench lint

install:
	bash .ci/install

# The per-packet core compiled by mypyc (iot_guard/native.py says which modules and why);
# `make clean-native` runs the source as it is.
native: install
	$(PYTHON) iot_guard/native.py build

clean-native:
	$(PYTHON) iot_guard/native.py clean

# The suite runs against the compiled core (a test checks it is there).
test: native
	$(PYTHON) -m pytest -q --expect-native

# The demo needs the package only (no test or bench extras) and runs the source: a build
# left over from older sources is removed, not used.
demo:
	bash .ci/install ""
	$(PYTHON) iot_guard/native.py status >/dev/null || $(PYTHON) iot_guard/native.py clean
	$(PYTHON) -m simulator.demo

bench: native
	$(PYTHON) -m bench

lint:
	$(PYTHON) -m ruff check iot_guard simulator tests bench
	$(PYTHON) -m mypy

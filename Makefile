# Two commands do all the set-up on a fresh machine (see README):
#   make demo   installs facesort into .venv and sorts the sample photos with the bundled model
#   make test   installs what the tests need and runs them, in parallel (pytest-xdist)
#   make bench  measures facesort run against the model alone and learn.predict (scripts/bench, ~8 min on an idle 2-core machine)
VENV ?= .venv
export PYTHONWARNINGS ?= ignore::FutureWarning

.PHONY: setup demo test bench
setup:
	FACESORT_VENV=$(VENV) scripts/setup

demo: setup
	$(VENV)/bin/facesort run data/sample --out sorted-sample

test: setup  # one process a core (at most 4), each test file in one of them: its module fixtures are built once
	$(VENV)/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

bench: setup
	$(VENV)/bin/python scripts/bench

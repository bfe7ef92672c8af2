# The README's two commands are `make demo` (main job) and `make test` (the whole suite, as CI).
PY := .venv/bin/python
STAMP := .venv/.pipelines-installed

.PHONY: setup demo test test-quick bench clean
setup:
	@bash workflow/scripts/install.sh

demo: setup
	$(PY) -m pipelines demo

test: setup
	$(PY) -m pytest -q

test-quick: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m pipelines.benchmarks.train_tiny

clean:
	rm -rf results work_dirs data

# The README's two commands are `make demo` (main job) and `make test` (the whole suite, as CI).
PY := .venv/bin/python
STAMP := .venv/.pipelines-installed

.PHONY: setup demo test test-quick bench clean
setup:
	@bash workflow/scripts/install.sh

# the demo ablation (configs/ablations/demo.yaml): baseline + 3 PRO-SCALE schedules on the
# synthetic set, all local on the CPU, tracked in results/mlflow.db. Re-running does nothing;
# after an interruption it resumes (checkpoints are kept). DEMO_ARGS adds snakemake options.
demo: setup
	PATH="$(CURDIR)/.venv/bin:$$PATH" .venv/bin/snakemake --cores 2 --rerun-incomplete \
		--show-failed-logs $(DEMO_ARGS)
	@echo "results:  results/<stage>/demo/<run-id>/  (metrics JSON; checkpoints in results/train/demo/)"
	@echo "report:   results/report/demo/report.md"
	@echo "MLflow:   sqlite:///results/mlflow.db  ->  .venv/bin/mlflow ui --backend-store-uri sqlite:///results/mlflow.db"

test: setup
	$(PY) -m pytest -q

test-quick: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m pipelines.benchmarks.train_tiny

clean:
	rm -rf results work_dirs data

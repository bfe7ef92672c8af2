# The README's two commands are `make demo` (main job) and `make test` (the tests; CI adds
# `make test-slow`).
PY := .venv/bin/python
STAMP := .venv/.pipelines-installed

.PHONY: setup demo test test-slow bench ui clean
setup:
	@bash workflow/scripts/install.sh

# the demo ablation (configs/ablations/demo.yaml): baseline + 2 PRO-SCALE schedules x 3 seeds on the
# synthetic set, all local on the CPU, tracked in results/mlflow.db. Re-running does nothing;
# after an interruption it resumes (checkpoints are kept). DEMO_ARGS adds snakemake options.
demo: setup
	PATH="$(CURDIR)/.venv/bin:$$PATH" .venv/bin/snakemake --cores 2 --rerun-incomplete \
		--show-failed-logs $(DEMO_ARGS)
	@echo "results:  results/<stage>/demo/<run-id>/<recipe>/  (metrics JSON; checkpoints in results/train/demo/)"
	@echo "report:   results/report/demo/report.md  and  results/report/demo/html/index.html"
	@echo "figures:  results/figures/demo/  (snakemake figures redraws them from MLflow)"
	@echo "MLflow:   sqlite:///results/mlflow.db  ->  make ui  (starts mlflow ui, prints the link to the demo's runs table)"

# `make test`: everything but the slow end-to-end tests (under 10 minutes on 2 cores);
# `make test-slow`: real DAG runs, SIGKILL/resume, SLURM (CI runs both, see .ci/run).
test: setup
	$(PY) -m pytest -q -m "not slow"

# the service tests (SLURM, PostgreSQL, MLflow and optuna-dashboard in a browser) spend much of
# their time waiting on their servers: they run beside the other slow tests, each in its own
# temporary folder; the target fails when either fails
test-slow: setup
	@rm -rf /tmp/pipelines-slow-services /tmp/pipelines-slow-rest
	$(PY) -m pytest -q -m slow tests/services --basetemp=/tmp/pipelines-slow-services --durations=10 & \
	services=$$!; \
	$(PY) -m pytest -q -m slow --ignore=tests/services --basetemp=/tmp/pipelines-slow-rest --durations=40; \
	rest=$$?; wait $$services; services=$$?; \
	echo "slow tests: services exit $$services, the others exit $$rest"; \
	test $$services -eq 0 -a $$rest -eq 0

# mlflow ui on the demo's store, with the link that opens its runs table (metric columns shown);
# UI_ARGS: --ablation FILE (its store, name and mlflow.ui), or --experiment NAME --tracking-uri URI
# --port N; the link is printed once the server answers
ui:
	$(PY) -m pipelines ui $(UI_ARGS)

bench: setup
	$(PY) -m pipelines.benchmarks.train_tiny

clean:
	rm -rf results work_dirs data

#!/usr/bin/env bash
# Execute the analysis notebooks headless with papermill; executed copies go to analysis/executed/.
#   bash analysis/run_notebooks.sh                                  (recorded test table)
#   bash analysis/run_notebooks.sh -p tracking_uri sqlite:///../results/mlflow.db -p experiment demo
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../.venv/bin/python}
mkdir -p executed
for nb in pareto ablation; do
    "$PY" -m papermill --cwd . --kernel python3 --no-progress-bar "$nb.ipynb" "executed/$nb.ipynb" "$@"
done

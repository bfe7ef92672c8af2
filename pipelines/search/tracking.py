"""Search trials in MLflow (the trained trials' runs, under a parent run of the search), and the
study's record of them that keeps the ablation's analysis and reports current.

Each run a search trained is ingested by :func:`pipelines.tracking.ingest.ingest` with role ``trial`` into
the base ablation's experiment (so reports and figures show searched points next to grid points,
marked by ``pipelines.role=trial``), then tagged with its trial number(s) and moved under the
search's own parent run (tag ``pipelines.role=search``, named after the study). Trials that reused
a grid run, warm-start trials and infeasible trials (never trained) stay in Optuna only: a reused
grid run already is a point in MLflow, and an infeasible setting has no result.

The record (:func:`write_trials_record`, ``<results>/search/<name>/trials.json``) lists the
searched runs now in the ablation's experiment, keyed by that content: it is rewritten only when
the content changed, so its modification time is that of the last change, and the search's last
step reruns the ablation's analysis (and so its figures and reports) exactly then.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipelines import contract as c

SEARCH_ROLE, SEARCH_TAG, TRIAL_TAG = c.ROLE_SEARCH, c.SEARCH_TAG, c.TRIAL_NUMBER_TAG


def _search_parent(client, experiment_id: str, name: str, storage_note: str) -> str:
    from pipelines.tracking import store as tracking

    found = tracking.search_all(client, experiment_id,
                                f"tags.`{c.ROLE_TAG}` = '{SEARCH_ROLE}' and "
                                f"tags.`{SEARCH_TAG}` = '{name}'")
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"search: {name}",
                            tags={c.ROLE_TAG: SEARCH_ROLE, SEARCH_TAG: name,
                                  c.NOTE_TAG: storage_note})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def track_trials(spec, study, progress: bool = False) -> dict:
    """Ingest every COMPLETE trial the search trained; returns ``{run_id: mlflow run id}``."""
    from pipelines.grid import RunPaths
    from pipelines.search.runs import make_run
    from pipelines.tracking import store as tracking
    from pipelines.tracking.ingest import ingest

    ablation = spec.ablation
    results, name = str(ablation.get("results", "results")), str(ablation["name"])
    trials: dict[str, list[int]] = {}
    settings: dict[str, tuple[str, dict]] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "COMPLETE" and t.user_attrs.get("status") == "trained":
            trials.setdefault(t.user_attrs["run_id"], []).append(t.number)
            settings[t.user_attrs["run_id"]] = (t.user_attrs["variant"],
                                                json.loads(t.user_attrs["settings"]))
    run_jsons = []
    for run_id in sorted(trials):
        # the current recipe's run.json (its folder is keyed by the recipe, pipelines.grid)
        path = RunPaths.of(results, name, make_run(spec, *settings[run_id])).run_json
        if Path(path).is_file():
            run_jsons.append(str(path))
    if not run_jsons:
        return {}
    mlflow = ablation.get("mlflow") or {}
    uri = tracking.resolve_tracking_uri(mlflow.get("tracking_uri", tracking.DEFAULT_TRACKING_URI))
    summary = ingest(name, results, run_jsons, uri, mlflow.get("artifact_location"),
                     progress=progress, role=c.ROLE_TRIAL)
    client = tracking.open_client(uri)
    parent = _search_parent(client, summary["experiment_id"], spec.name,
                            f"Optuna study {study.study_name!r} (search space {spec.path})")
    out = {}
    for run_id, entry in summary["runs"].items():
        mlflow_id = entry["mlflow_run_id"]
        numbers = trials[run_id]
        client.set_tag(mlflow_id, c.PARENT_TAG, parent)
        client.set_tag(mlflow_id, SEARCH_TAG, spec.name)
        client.set_tag(mlflow_id, TRIAL_TAG, ",".join(str(n) for n in numbers))
        client.log_metric(mlflow_id, c.TRIAL_NUMBER, float(numbers[0]))
        client.log_metric(mlflow_id, c.SEARCH_GFLOPS_BUDGET, float(spec.gflops_budget))
        out[run_id] = mlflow_id
    return out


RECORD = "trials.json"


def record_path(spec) -> Path:
    """``<results>/search/<name>/trials.json``."""
    return Path(spec.ablation.get("results", "results")) / "search" / spec.name / RECORD


def write_trials_record(spec, study, tracked: dict[str, str]) -> bool:
    """Write the record of the searched runs in the ablation's experiment (``tracked``: run id
    -> MLflow run id, :func:`track_trials`), with their trial numbers and objectives, when its
    content changed; returns whether it did. ``key``: a hash of that content."""
    from pipelines.config import write_json_atomic

    trials: dict[str, dict] = {}
    for t in study.get_trials(deepcopy=False):
        run_id = t.user_attrs.get("run_id")
        if (run_id in tracked and t.state.name == "COMPLETE"
                and t.user_attrs.get("status") == "trained"):
            entry = trials.setdefault(run_id, {"mlflow_run_id": tracked[run_id], "trials": [],
                                               "miou": t.values[0],
                                               "gflops_total": t.values[1]})
            entry["trials"].append(t.number)
    content = {"search": spec.name, "study": study.study_name,
               "ablation": str(spec.ablation["name"]), "runs": dict(sorted(trials.items()))}
    key = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    path = record_path(spec)
    try:
        if json.loads(path.read_text()).get("key") == key:
            return False
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"key": key, **content})
    return True

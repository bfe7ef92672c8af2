"""The rungs of the multi-fidelity search: the schedule, a rung's result, its report and tracking.

:class:`Fidelity` is a search's ``fidelity:`` block, checked (:func:`parse_fidelity`).

A rung job is a training stopped and validated at its checkpoint ``r`` (``python -m pipelines
train --stop-at r``): its result is the val mIoU its training logged there (:func:`rung_result`).
:func:`check_rungs` refuses rungs that are not checkpoint and validation iterations of every
variant's training before the search starts; :func:`report_markdown` writes the search's
report; :func:`track_curves` gives every setting its partial learning curve in MLflow.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipelines.errors import UserError


@dataclass(frozen=True)
class Fidelity:
    """Rungs (iterations of one schedule, increasing, the last one its full budget) and the
    reduction factor (the first ``1/eta`` of a rung is promoted)."""

    rungs: tuple[int, ...]
    eta: float = 2.0
    proposals: str = "sampler"  # or "random"
    min_points: int = 10  # results a rung needs before the sampler is fitted on it
    n_startup: int = 10  # the fitted sampler's random start-up (first-rung results)

    @property
    def full(self) -> int:
        return self.rungs[-1]

    def cost(self, level: int) -> int:
        """Iterations of the job that takes a setting from rung ``level - 1`` to ``level``."""
        return self.rungs[level] - (self.rungs[level - 1] if level else 0)


def parse_fidelity(block: Mapping[str, Any] | None, max_iters: int, where: str = "fidelity"
                   ) -> Fidelity | None:
    """The search config's ``fidelity`` block (``None``: every training is full):
    ``{rungs: [12, 24, 48], eta: 2, proposals: sampler}``; the full budget ``max_iters`` is
    added as the last rung."""
    if block is None:
        return None
    if not isinstance(block, Mapping):
        raise UserError(f"{where}: expected a mapping (rungs, eta, proposals)")
    unknown = set(block) - {"rungs", "eta", "proposals", "min_points", "n_startup"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    rungs = block.get("rungs")
    if (not isinstance(rungs, list) or not rungs
            or any(isinstance(r, bool) or not isinstance(r, int) for r in rungs)):
        raise UserError(f"{where}.rungs: expected a list of iterations, e.g. [12, 24, 48]")
    rungs = [r for r in rungs if r != max_iters] + [max_iters]
    if rungs != sorted(set(rungs)) or rungs[0] < 1:
        raise UserError(f"{where}.rungs: expected increasing iterations in 1..{max_iters - 1} "
                        f"(train_cfg.max_iters {max_iters} is the last rung), got {rungs[:-1]}")
    eta = block.get("eta", 2)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta <= 1:
        raise UserError(f"{where}.eta: expected a number > 1, got {eta!r}")
    proposals = block.get("proposals", "sampler")
    if proposals not in ("sampler", "random"):
        raise UserError(f"{where}.proposals: expected sampler or random, got {proposals!r}")
    counts = {}
    for key in ("min_points", "n_startup"):
        value = block.get(key, 10)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{where}.{key}: expected a whole number >= 1, got {value!r}")
        counts[key] = value
    return Fidelity(tuple(rungs), float(eta), proposals, **counts)


def val_curve(work_dir) -> dict[int, float]:
    """Iteration -> val mIoU (percent) a training logged in ``work_dir`` (mmengine's
    ``scalars.json`` of every start of it; a resumed training validates its resume point
    again, with the same result)."""
    out: dict[int, float] = {}
    for path in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
        for line in path.read_text().splitlines():
            values = json.loads(line)
            if "mIoU" in values:
                out[int(values["step"])] = round(float(values["mIoU"]), 4)
    return dict(sorted(out.items()))


def rung_result(done_file, stop_at: int) -> dict | None:
    """``{"miou": ...}`` of a rung job (``train --stop-at``): the val mIoU its training logged
    at ``stop_at``; None when the job wrote no done file, a failure record, or no validation."""
    from pipelines.stages.failures import read_failure

    done_file = Path(done_file)
    if not done_file.is_file() or read_failure(str(done_file)) is not None:
        return None
    miou = val_curve(done_file.parent).get(int(stop_at))
    return None if miou is None else {"miou": miou}


def check_rungs(spec) -> None:
    """Every rung below the full budget is a checkpoint and validation iteration of each
    variant's training (``train --stop-at`` would refuse it after the search started)."""
    from pipelines.grid.render import load_rendered, render_run
    from pipelines.search.runs import REPO, make_run
    from pipelines.stages.train import check_stop_at

    for variant, axes in spec.variants.items():
        first = {a.axis: a.edge_values()[0] for a in axes}
        run = make_run(spec, variant, first)
        cfg = load_rendered(render_run(run, REPO))  # the config its trainings will read
        for r in spec.fidelity.rungs[:-1]:
            try:
                check_stop_at(cfg, r)
            except UserError as err:
                raise UserError(f"search space key 'fidelity.rungs' (variant {variant}): "
                                f"{str(err).replace('--stop-at', 'rung')}") from None


def report_markdown(spec, record: dict) -> str:
    """The search's hypervolume against iterations and training hours, and its settings' rung
    results (a setting below the full budget is marked stopped)."""
    rungs = spec.fidelity.rungs
    lines = [f"# Multi-fidelity search {spec.name}", "",
             f"Rungs {list(rungs)} (iterations of one schedule), eta {spec.fidelity.eta}; "
             f"budget {spec.max_trainings} x {spec.fidelity.full} iterations; GFLOPs budget "
             f"{spec.gflops_budget}. Hypervolume of the settings trained to the full budget "
             "(reference: mIoU 0, GFLOPs = the budget).", "",
             "| iterations spent | training hours | hypervolume | settings at full budget |",
             "|---:|---:|---:|---:|"]
    for job in record.get("jobs", []):
        lines.append(f"| {job['iterations']} | {job['seconds'] / 3600:.3f} | {job['hv']:.4f} | "
                     f"{job['settings_full']} |")
    lines += ["", "| setting | GFLOPs | " + " | ".join(f"mIoU @{r}" for r in rungs)
              + " | |", "|---|---:|" + "---:|" * len(rungs) + "---|"]
    for run_id, s in record.get("settings", {}).items():
        got = {int(k): v for k, v in s["rungs"].items()}
        cells = [f"{got[r]:.2f}" if r in got else "" for r in rungs]
        lines.append(f"| {run_id} | {s['gflops_total']:.3f} | " + " | ".join(cells)
                     + f" | {'stopped' if s['stopped'] else 'full'} |")
    return "\n".join(lines) + "\n"


#: MLflow: the metric of a setting's learning curve (one value per rung, step = iteration), and
#: the role of a stopped setting's run (not a data point of the ablation's analysis: it has no
#: full-budget result)
CURVE_METRIC = "val_miou_rung"
ROLE_STOPPED = "stopped"


def track_curves(spec, study, tracked: dict[str, str]) -> dict[str, str]:
    """One MLflow run per setting of the search with its partial learning curve: the run of a
    setting trained to the full budget (``tracked``: run id -> MLflow run id, from
    :func:`pipelines.search.tracking.track_trials`) gets its rung results as
    :data:`CURVE_METRIC`; a stopped setting gets a run of its own under the search's parent run
    (role ``stopped``, its trial number, GFLOPs and curve), written once. Returns run id -> MLflow
    run id of the stopped settings."""
    from pipelines import contract as c
    from pipelines.search.tracking import _search_parent
    from pipelines.tracking import store as tracking

    mlflow = spec.ablation.get("mlflow") or {}
    uri = tracking.resolve_tracking_uri(mlflow.get("tracking_uri",
                                                   tracking.DEFAULT_TRACKING_URI))
    client = tracking.open_client(uri)
    experiment = tracking.get_or_create_experiment(client, str(spec.ablation["name"]),
                                                   mlflow.get("artifact_location"))
    parent = _search_parent(client, experiment, spec.name,
                            f"Optuna study {study.study_name!r} (search space {spec.path})")
    done = {r.data.tags.get(c.RUN_ID_TAG): r.info.run_id for r in tracking.search_all(
        client, experiment, f"tags.`{c.ROLE_TAG}` = '{ROLE_STOPPED}' and "
                            f"tags.`{c.SEARCH_TAG}` = '{spec.name}'")}
    out = {}
    for t in study.get_trials(deepcopy=False):
        run_id, rungs = t.user_attrs.get("run_id"), json.loads(t.user_attrs.get("rungs", "{}"))
        if run_id is None or not rungs:
            continue
        if t.state.name == "COMPLETE" and run_id in tracked:
            mlflow_id = tracked[run_id]
            logged = {m.step for m in client.get_metric_history(mlflow_id, CURVE_METRIC)}
            for r, miou in rungs.items():
                if int(r) not in logged:
                    client.log_metric(mlflow_id, CURVE_METRIC, float(miou), step=int(r))
        elif t.state.name == "PRUNED" and t.user_attrs.get("status") == "stopped":
            if run_id in done:
                out[run_id] = done[run_id]
                continue
            run = client.create_run(experiment, run_name=f"{run_id} (stopped)", tags={
                c.ROLE_TAG: ROLE_STOPPED, c.SEARCH_TAG: spec.name, c.RUN_ID_TAG: run_id,
                c.PARENT_TAG: parent, c.TRIAL_NUMBER_TAG: str(t.number)})
            client.log_param(run.info.run_id, "settings", t.user_attrs.get("settings", ""))
            client.log_metric(run.info.run_id, "gflops_total",
                              float(t.user_attrs["gflops_total"]))
            for r, miou in sorted(rungs.items(), key=lambda kv: int(kv[0])):
                client.log_metric(run.info.run_id, CURVE_METRIC, float(miou), step=int(r))
            client.set_terminated(run.info.run_id, status="KILLED")
            out[run_id] = run.info.run_id
    return out

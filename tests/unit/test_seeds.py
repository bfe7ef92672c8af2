"""Seeds pooled into settings: intervals, fronts on means, paired tests (hand-checked numbers)."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from pipelines.analysis import settings as st

#: the baseline setting's name (settings are named by method, not by variant)
BASE = "Mask2Former (baseline)"


def runs_table(rows):
    """(variant, schedule or None, seed, miou, gflops) -> a runs table shaped like load_runs'."""
    out = []
    for i, (variant, schedule, seed, miou, gflops) in enumerate(rows):
        axes = ["schedule", "seed"] if schedule else ["seed"]
        out.append({"run_id": f"{variant}-{schedule}-seed{seed}", "mlflow_run_id": f"m{i:03d}",
                    "experiment_id": "1", "experiment": "t", "role": "run", "ablation": "t",
                    "status": "FINISHED", "variant": variant, "schedule": schedule or "",
                    "seed": seed, "miou": miou, "gflops_total": gflops,
                    "iou.small_blob": miou / 2, "train_time_s": 360.0,
                    "axes": json.dumps(axes)})
    return pd.DataFrame(out)


def test_student_t_interval_by_hand():
    mean, std, lo, hi, n = st.interval([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.302653; half width = 4.302653 * 1 / sqrt(3)
    assert (mean, std, n) == (2.0, 1.0, 3)
    assert hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert mean - lo == pytest.approx(hi - mean)
    one = st.interval([5.0, float("nan")])
    assert one[0] == 5.0 and one[4] == 1 and math.isnan(one[2]) and math.isnan(one[3])


def test_runs_differing_only_by_seed_form_one_setting():
    a = st.analyse(runs_table([
        ("baseline", None, 0, 10.0, 3.0), ("baseline", None, 1, 12.0, 3.0),
        ("baseline", None, 2, 14.0, 3.0),
        ("pro_scale", "1-1-4", 0, 9.0, 2.0), ("pro_scale", "1-1-4", 1, 11.0, 2.0),
        ("pro_scale", "3-3-3", 0, 13.0, 2.5)]))
    s = a.settings.set_index("setting")
    assert list(a.settings["setting"]) == [BASE, "PRO-SCALE 1-1-4", "PRO-SCALE 3-3-3"]
    assert s.loc[BASE, "n_seeds"] == 3 and s.loc[BASE, "seeds"] == "0 1 2"
    assert s.loc[BASE, "miou"] == 12.0 and s.loc[BASE, "miou_std"] == 2.0
    assert s.loc[BASE, "iou.small_blob"] == 6.0  # every metric, per-class IoU too
    assert s.loc[BASE, "iou.small_blob_hi"] > 6.0
    assert s.loc[BASE, "train_hours"] == pytest.approx(0.3)
    assert s.loc["PRO-SCALE 3-3-3", "n_seeds"] == 1
    assert math.isnan(s.loc["PRO-SCALE 3-3-3", "miou_lo"])
    assert json.loads(s.loc["PRO-SCALE 1-1-4", "mlflow_run_ids"]) == ["m003", "m004"]


def test_front_is_computed_on_means_not_on_single_runs():
    # pro_scale 1-1-4 has one lucky seed (20) above every baseline seed, but its mean (11) is
    # below the baseline's (12) at lower cost: both settings stay on the front, and the lucky
    # run alone does not dominate the baseline.
    a = st.analyse(runs_table([
        ("baseline", None, 0, 11.0, 3.0), ("baseline", None, 1, 13.0, 3.0),
        ("pro_scale", "1-1-4", 0, 2.0, 2.0), ("pro_scale", "1-1-4", 1, 20.0, 2.0),
        ("pro_scale", "3-3-3", 0, 10.0, 2.5), ("pro_scale", "3-3-3", 1, 10.5, 2.5)]))
    overall = a.fronts[a.fronts["front"] == "overall"]
    assert list(overall["setting"]) == ["PRO-SCALE 1-1-4", BASE]
    assert list(overall["miou"]) == [11.0, 12.0]


def test_paired_test_pairs_by_seed_and_names_its_verdict():
    # differences 1, 2, 3 paired by seed: t = 2 / (1 / sqrt 3) = 3.4641, 2 dof -> p = 0.0742
    table = runs_table([
        ("baseline", None, 0, 10.0, 3.0), ("baseline", None, 1, 20.0, 3.0),
        ("baseline", None, 2, 30.0, 3.0),
        ("pro_scale", "1-1-4", 2, 33.0, 2.0), ("pro_scale", "1-1-4", 0, 11.0, 2.0),
        ("pro_scale", "1-1-4", 1, 22.0, 2.0),
        ("pro_scale", "3-3-3", 0, 15.0, 2.5), ("pro_scale", "3-3-3", 1, 25.0, 2.5),
        ("pro_scale", "3-3-3", 2, 35.0, 2.5),
        ("pro_scale", "2-2-2", 5, 1.0, 2.2)])
    a = st.analyse(table)
    t = st.paired_test(a.runs, "PRO-SCALE 1-1-4", BASE)
    assert t.n_pairs == 3 and t.mean_diff == pytest.approx(2.0)
    assert t.p_value == pytest.approx(0.07418, abs=1e-4) and t.verdict == st.NOT_DISTINCT
    # an unpaired test would see two overlapping samples; the pairing makes +5 on every seed
    # certain
    same_shift = st.paired_test(a.runs, "PRO-SCALE 3-3-3", BASE)
    assert same_shift.verdict == st.DISTINCT and same_shift.p_value == 0.0
    # seed 5 has no partner in the baseline
    lone = st.paired_test(a.runs, "PRO-SCALE 2-2-2", BASE)
    assert lone.verdict == st.NOT_TESTABLE and lone.text() == "not testable (0 paired seeds)"
    assert st.paired_test(a.runs, BASE, BASE).p_value == 1.0


def test_every_front_point_gets_a_verdict():
    a = st.analyse(runs_table([
        ("baseline", None, 0, 10.0, 3.0), ("baseline", None, 1, 12.0, 3.0),
        ("baseline", None, 2, 15.0, 3.0),
        ("pro_scale", "1-1-4", 0, 4.0, 2.0), ("pro_scale", "1-1-4", 1, 5.5, 2.0),
        ("pro_scale", "1-1-4", 2, 8.0, 2.0),
        ("pro_scale", "3-3-3", 0, 11.0, 2.5), ("pro_scale", "3-3-3", 1, 11.5, 2.5),
        ("pro_scale", "3-3-3", 2, 14.0, 2.5)]))
    v = a.verdicts.set_index("setting")
    assert set(v.index) == {BASE, "PRO-SCALE 1-1-4", "PRO-SCALE 3-3-3"}
    # 1-1-4 loses 6, 6.5 and 7 points to the baseline, 7, 6, 6 to 3-3-3: differs from both
    assert v.loc["PRO-SCALE 1-1-4", "verdict"] == st.DISTINCT
    assert v.loc["PRO-SCALE 1-1-4", "vs_baseline"].startswith("distinguishable (Δ -6.50")
    # 3-3-3 vs baseline: differences 1, -0.5, -1: not distinguishable
    assert v.loc["PRO-SCALE 3-3-3", "verdict"] == st.NOT_DISTINCT
    assert v.loc["PRO-SCALE 3-3-3", "not_distinct_from"] == BASE
    assert v.loc[BASE, "vs_baseline"] == "is the baseline"
    assert a.label("PRO-SCALE 1-1-4") == st.DISTINCT and a.label("nope") == ""


def test_one_seed_settings_are_not_testable():
    a = st.analyse(runs_table([("baseline", None, 0, 10.0, 3.0),
                               ("pro_scale", "1-1-4", 0, 9.0, 2.0)]))
    assert set(a.verdicts["verdict"]) == {st.NOT_TESTABLE}
    assert "not testable (1 paired seed)" in set(a.verdicts["vs_baseline"])


def test_same_label_different_axis_values_stay_apart():
    table = runs_table([("pro_scale", "1-1-4", 0, 9.0, 2.0), ("pro_scale", "1-1-4", 1, 9.0, 2.0)])
    table.loc[1, "axes"] = json.dumps(["schedule", "trc", "seed"])
    table["trc"] = [pd.NA, False]  # a false flag is not in the label, but it is an axis value
    a = st.analyse(table)
    assert len(a.settings) == 2 and a.settings["setting"].is_unique


# --------------------------------------------------------------------------- budget (before a run)
def _trainings(tmp_path, seeds=(0, 1)):
    from pipelines.grid import expand_grid

    cfg = {"name": "plan", "results": str(tmp_path / "results"),
           "data": {"root": str(tmp_path / "data"),
                    "synthetic": {"train": 4, "val": 2, "size": 64, "seed": 0}},
           "train": {"max_iters": 100},
           "grid": {"seed": list(seeds), "variants": {"baseline": {
               "config": "configs/models/mask2former_r18_synthetic-128x128.py"}}},
           "resources": {"train": {"gpus": 0, "cpus": 1, "mem_mb": 1000, "runtime": 1}}}
    runs = expand_grid(cfg, repo=str(st.__file__).rsplit("/pipelines/", 1)[0])
    trainings = {}
    for run in runs:
        trainings.setdefault(run.train_id, run)
    return cfg, trainings


def test_plan_counts_pending_trainings_and_estimates_time(tmp_path):
    from pipelines.analysis import budget
    from pipelines.grid import RunPaths

    cfg, trainings = _trainings(tmp_path)
    plan = budget.make_plan(cfg, trainings, pending_outputs=6, cores=2, history={})
    rate = budget.RECORDED_S_PER_ITER["configs/models/mask2former_r18_synthetic-128x128.py"]
    assert (plan.trainings, plan.trainings_pending, plan.iterations_pending) == (2, 2, 200)
    assert plan.jobs_pending == 8 and plan.parallel == 2
    assert plan.seconds == pytest.approx(rate * 200 / 2 + budget.OTHER_JOB_S * 6 / 2)
    assert "2 of 2 trainings to run (200 iterations), about 8 jobs" in plan.text()
    # a finished training is not counted again; the store's own times win over the recorded
    done = RunPaths.of(cfg["results"], "plan", next(iter(trainings.values()))).train_done
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    cfg_path = "configs/models/mask2former_r18_synthetic-128x128.py"
    plan = budget.make_plan(cfg, trainings, pending_outputs=0, cores=1,
                            history={cfg_path: 3.0})
    assert plan.trainings_pending == 1 and plan.seconds == pytest.approx(300.0)
    assert "this ablation's earlier runs" in plan.text()


def test_plan_without_a_recorded_time_says_so(tmp_path, monkeypatch):
    from pipelines.analysis import budget

    cfg, trainings = _trainings(tmp_path, seeds=(0,))
    monkeypatch.setattr(budget, "RECORDED_S_PER_ITER", {})
    plan = budget.make_plan(cfg, trainings, pending_outputs=1, cores=2, history={})
    assert plan.seconds is None and "no time estimate" in plan.text()


def test_plan_reads_no_history_from_a_store_that_cannot_be_read(tmp_path):
    """The start-up plan reads the store's training times; a truncated store ended the real
    run with a traceback there (ingest refuses such a store in one line later)."""
    from pipelines.analysis import budget
    from pipelines.tracking.store import open_client

    client = open_client(f"sqlite:///{tmp_path / 'store.db'}")
    experiment = client.create_experiment("plan")
    for i in range(20):
        client.log_metric(client.create_run(experiment).info.run_id, "train_time_s", 1.0 + i)
    whole = (tmp_path / "store.db").read_bytes()
    (tmp_path / "cut.db").write_bytes(whole[:len(whole) // 3])
    (tmp_path / "notes.db").write_text("my notes\n")
    for name in ("cut.db", "notes.db"):
        assert budget.history_s_per_iter(f"sqlite:///{tmp_path / name}", "plan") == {}


def test_ranking_stability_is_kendall_tau_between_seeds():
    # seed 0 and 1 rank the three settings the same; seed 2 swaps the top two
    a = st.analyse(runs_table([
        ("baseline", None, 0, 30.0, 3.0), ("baseline", None, 1, 31.0, 3.0),
        ("baseline", None, 2, 20.0, 3.0),
        ("pro_scale", "3-3-3", 0, 25.0, 2.5), ("pro_scale", "3-3-3", 1, 26.0, 2.5),
        ("pro_scale", "3-3-3", 2, 25.0, 2.5),
        ("pro_scale", "1-1-1", 0, 10.0, 2.0), ("pro_scale", "1-1-1", 1, 11.0, 2.0),
        ("pro_scale", "1-1-1", 2, 10.0, 2.0)]))
    taus = st.ranking_stability(a.runs).set_index(["seed_a", "seed_b"])["tau"]
    # 3 settings: one discordant pair of 3 -> tau = (2 - 1) / 3
    assert taus[(0, 1)] == pytest.approx(1.0)
    assert taus[(0, 2)] == pytest.approx(1 / 3) and taus[(1, 2)] == pytest.approx(1 / 3)


@pytest.mark.parametrize("settings, seeds, missing, levels", [
    (25, 40, 0.2, 5),     # ties within a seed, settings missing for some seeds
    (30, 12, 0.0, None),  # no ties, every setting with every seed
    (6, 8, 0.6, 3),       # pairs of seeds with fewer than two settings in common (NaN)
    (4, 3, 0.0, 1),       # every setting tied under a seed (NaN, as scipy)
])
def test_every_pair_of_seeds_at_once_is_scipys_kendall_tau(settings, seeds, missing, levels):
    """All pairs of seeds ranked at once (matrix products) give scipy's tau-b, pair by pair."""
    import numpy as np

    from pipelines import contract

    rng = np.random.default_rng(settings * seeds)
    runs = pd.DataFrame([
        {"role": contract.ROLE_RUN, "setting": f"s{s}", contract.SEED: k,
         contract.MIOU: float(rng.integers(0, levels)) if levels else float(rng.normal())}
        for s in range(settings) for k in range(seeds) if rng.random() >= missing])
    at_once = st.ranking_stability(runs)
    table = runs.pivot_table(index="setting", columns=contract.SEED, values=contract.MIOU)
    one_by_one = st._ranking_stability_pairwise(table, sorted(table.columns), list(at_once))
    assert at_once[["seed_a", "seed_b", "n_settings"]].equals(
        one_by_one[["seed_a", "seed_b", "n_settings"]])
    assert np.allclose(at_once["tau"], one_by_one["tau"], atol=1e-6, equal_nan=True)
    assert at_once["tau"].notna().any() or levels == 1

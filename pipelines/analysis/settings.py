"""Seeds -> settings: replicate statistics, fronts on means and paired tests, computed once.

The analysis is one way (``../shared/docs/architecture.md``; ``workflow/README.md``): the tidy runs table of
:mod:`pipelines.analysis.data` -> :func:`analyse` -> an :class:`Analysis` holding

* ``runs``: the tidy table with a ``setting`` column added (grid runs and search trials);
* ``settings``: one row per *setting*, i.e. per group of grid runs that differ only by their seed
  (group key: the variant plus every axis of the run except ``seed``, read from the run's
  ``axes`` column). For every metric ``m`` it has the mean ``m``, the sample standard deviation
  ``m_std`` and a two-sided 95 % Student-t confidence interval ``[m_lo, m_hi]``
  (``mean +/- t(0.975, n-1) * std / sqrt(n)``; NaN when fewer than two seeds have the metric);
  ``n_seeds``, the seeds, the member runs, and ``train_hours`` (sum of the runs' training wall
  time: CPU-hours on the CPU, GPU-hours on one GPU per training);
* ``fronts``: the Pareto fronts (per variant and overall) computed **once, on the means**
  (:func:`pipelines.analysis.pareto.fronts_by`);
* ``verdicts``: for every point of the overall front, paired tests of its mIoU against the
  baseline setting and against every other front point (:data:`TEST_NAME`);
* ``series``: one row per variant, its series name, methods, baseline flag and style
  (:mod:`pipelines.analysis.roles`: roles come from the recorded methods and baseline, never
  from a variant's name);
* ``ladder``: ECO-M2F's fixed exits and oracle gate per gated run, one row each
  (:mod:`pipelines.analysis.ladder`).

Every figure, table and report is drawn from one :class:`Analysis`, saved once by
``python -m pipelines analyse`` (:mod:`pipelines.analysis.cli`); none loads runs or computes a front
again.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from pipelines import contract
from pipelines.analysis.data import AXES_COLUMN, BASELINE_COLUMN, METHODS_COLUMN
from pipelines.analysis.roles import row_axis_names

CONFIDENCE = 0.95
ALPHA = 0.05
INTERVAL_NAME = "95 % confidence interval of the mean, Student t with n - 1 degrees of freedom"
TEST_NAME = ("paired t-test on mIoU across seeds (scipy.stats.ttest_rel, two-sided, "
             f"alpha = {ALPHA:g}, runs paired by seed, no multiple-comparison correction)")
ONE_SEED = "1 seed, no interval"

DISTINCT, NOT_DISTINCT, NOT_TESTABLE = "distinguishable", "not distinguishable", "not testable"
#: the verdict of a point on its series' front only (compared with the baseline alone)
OFF_OVERALL = "off the overall front"

#: what is bit-for-bit reproducible for one seed (shown in the reports)
DETERMINISM = (
    "Determinism: on the CPU, two trainings with the same seed, config and data give identical "
    "weights and metrics (tested: tests/workflow/test_determinism.py; mmengine's "
    "randomness.seed seeds Python, numpy and torch, data-loader workers are seeded from it). "
    "FLOPs are traced from the model and do not depend on the seed. Latency is a measurement and "
    "varies with machine load. On a GPU, cuDNN autotuning and atomic adds (mmcv's deformable "
    "attention backward, scatter/index_add) make trainings differ in the last bits unless "
    "randomness.deterministic=True is set, which costs speed and still leaves mmcv's CUDA "
    "deformable-attention backward non-deterministic; treat GPU replicates as seeds that differ.")


def _missing(value) -> bool:
    return value is None or value is pd.NA or value == "" or (
        isinstance(value, float) and math.isnan(value))


def setting_key(row) -> str:
    """Stable key of a run's setting: its variant and every axis value but the seed (JSON)."""
    names = row_axis_names(row)
    values = {}
    for name in names:
        if name == contract.SEED:
            continue
        value = row.get(name, None)
        if _missing(value):
            value = None
        elif hasattr(value, "item"):
            value = value.item()
        values[name] = value
    return json.dumps([str(row["variant"]), values], sort_keys=True, default=str)


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric result columns summarised per setting (mIoU, per-class IoU, GFLOPs, times...)."""
    cols = []
    for col in df.columns:
        if col == contract.TRIAL_NUMBER:
            continue
        if col in contract.METRICS or col.startswith(
                (contract.IOU_PREFIX, "gflops_", "latency_")) or col == "params":
            if pd.api.types.is_numeric_dtype(df[col]):
                cols.append(col)
    return cols


def interval(values) -> tuple[float, float, float, float, int]:
    """``(mean, std, lo, hi, n)`` of the finite values (Student t, :data:`CONFIDENCE`)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return (math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return (mean, math.nan, math.nan, math.nan, n)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    return (mean, std, mean - half, mean + half, n)


def summarise_settings(runs: pd.DataFrame, series: pd.DataFrame) -> pd.DataFrame:
    """One row per setting of the grid runs in ``runs`` (which hold ``setting`` and ``series``
    columns), in ``series`` order."""
    grid = runs[runs["role"] == contract.ROLE_RUN]
    metrics = metric_columns(grid)
    axis_cols = [c for c in _axis_columns(grid) if c != contract.SEED]
    rows = []
    for key, group in grid.groupby("_setting_key", sort=False):
        group = group.sort_values([contract.SEED, "run_id"], kind="stable", na_position="last")
        first = group.iloc[0]
        seeds = [int(s) for s in group[contract.SEED].dropna()]
        row = {"setting": first["setting"], "variant": first["variant"],
               "series": first["series"], METHODS_COLUMN: first[METHODS_COLUMN],
               BASELINE_COLUMN: bool(first[BASELINE_COLUMN]),
               "setting_key": key, "n_seeds": int(len(group)),
               "seeds": " ".join(str(s) for s in seeds),
               "run_ids": json.dumps(list(group["run_id"])),
               "mlflow_run_ids": json.dumps(list(group["mlflow_run_id"])),
               "experiment_id": first["experiment_id"], "experiment": first["experiment"],
               "config": first.get("config", pd.NA), AXES_COLUMN: first[AXES_COLUMN]}
        for col in axis_cols:
            row[col] = first[col]
        for col in metrics:
            mean, std, lo, hi, _ = interval(group[col].to_numpy(dtype=float, na_value=np.nan))
            row.update({col: mean, f"{col}_std": std, f"{col}_lo": lo, f"{col}_hi": hi})
        times = group[contract.TRAIN_TIME_S].dropna() if contract.TRAIN_TIME_S in group else []
        row["train_hours"] = float(sum(times)) / 3600.0 if len(times) else math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=["setting", "variant", "series", METHODS_COLUMN,
                                     BASELINE_COLUMN, "setting_key", "n_seeds", "miou",
                                     "gflops_total", "train_hours"])
    for col in axis_cols:  # an axis keeps its column's dtype (the tidy table's)
        out[col] = out[col].astype(grid[col].dtype)
    order = {v: i for i, v in enumerate(series["series"])}
    out = out.assign(_o=out["series"].map(order))
    sort = ["_o"] + (["gflops_total"] if "gflops_total" in out else []) + ["setting"]
    return out.sort_values(sort, kind="stable", na_position="last").drop(
        columns="_o").reset_index(drop=True)


def _axis_columns(df: pd.DataFrame) -> list[str]:
    from pipelines.analysis.data import axis_names

    return [c for c in axis_names(df) if c in df.columns]


@dataclass(frozen=True)
class PairedTest:
    """Outcome of :func:`paired_test` (``p_value`` NaN when not testable)."""

    verdict: str
    n_pairs: int
    mean_diff: float
    p_value: float

    def text(self) -> str:
        if self.verdict == NOT_TESTABLE:
            return f"{NOT_TESTABLE} ({self.n_pairs} paired seed{'s' * (self.n_pairs != 1)})"
        return f"{self.verdict} (Δ {self.mean_diff:+.2f}, p = {self.p_value:.3f}, " \
               f"n = {self.n_pairs})"


def paired_test(runs: pd.DataFrame, a: str, b: str, metric: str = contract.MIOU) -> PairedTest:
    """Paired t-test of ``metric`` between settings ``a`` and ``b``, runs matched by seed.

    Returns a :class:`PairedTest` whose verdict is :data:`NOT_TESTABLE` with fewer than two seeds
    present in both settings. Identical differences on every seed (zero spread) are
    distinguishable unless they are all zero.
    """
    from scipy import stats

    grid = runs[runs["role"] == contract.ROLE_RUN]

    def by_seed(name):
        part = grid[grid["setting"] == name].dropna(subset=[contract.SEED, metric])
        return part.groupby(contract.SEED)[metric].mean()

    xa, xb = by_seed(a), by_seed(b)
    common = sorted(set(xa.index) & set(xb.index))
    n = len(common)
    if n < 2:
        return PairedTest(NOT_TESTABLE, n, math.nan, math.nan)
    da = xa.loc[common].to_numpy(dtype=float)
    db = xb.loc[common].to_numpy(dtype=float)
    diff = da - db
    mean_diff = float(diff.mean())
    if np.allclose(diff, diff[0], rtol=0, atol=1e-12):
        p = 1.0 if abs(diff[0]) <= 1e-12 else 0.0
    else:
        p = float(stats.ttest_rel(da, db).pvalue)
    return PairedTest(DISTINCT if p < ALPHA else NOT_DISTINCT, n, mean_diff, p)


def front_verdicts(runs: pd.DataFrame, settings: pd.DataFrame,
                   fronts: pd.DataFrame) -> pd.DataFrame:
    """Per point of the overall front: tests against the baseline and the other front points;
    per point on a series' front only: :data:`OFF_OVERALL` and its test against the baseline.

    Columns: ``setting``, ``vs_baseline`` (text), ``not_distinct_from`` /
    ``not_testable_with`` (settings, ``; ``-joined) and ``verdict``: :data:`DISTINCT` when every
    test says so, :data:`NOT_DISTINCT` when any test does not separate it, else
    :data:`NOT_TESTABLE`.
    """
    overall = fronts[fronts["front"] == "overall"] if len(fronts) else fronts
    names = list(overall["setting"]) if len(overall) else []
    baselines = settings.loc[settings[BASELINE_COLUMN].fillna(False).astype(bool),
                             "setting"].tolist() if len(settings) else []
    base = baselines[0] if baselines else None
    rows = []
    for name in names:
        tests = {}
        if base is not None and name != base:
            tests[base] = paired_test(runs, name, base)
        for other in names:
            if other != name:
                tests[other] = paired_test(runs, name, other)
        vs_base = tests[base].text() if base in tests else (
            "is the baseline" if name == base else "no baseline run")
        nd = [o for o, t in tests.items() if t.verdict == NOT_DISTINCT]
        nt = [o for o, t in tests.items() if t.verdict == NOT_TESTABLE]
        if nd:
            verdict = NOT_DISTINCT
        elif nt or not tests:
            verdict = NOT_TESTABLE
        else:
            verdict = DISTINCT
        rows.append({"setting": name, "verdict": verdict, "vs_baseline": vs_base,
                     "not_distinct_from": "; ".join(nd), "not_testable_with": "; ".join(nt)})
    # points of a series' front only: tested against the baseline, so every front row has a
    # filled (or explained) verdict
    others = [] if not len(fronts) else list(dict.fromkeys(
        fronts.loc[~fronts["setting"].isin(names), "setting"]))
    for name in others:
        vs_base = (paired_test(runs, name, base).text() if base is not None and name != base
                   else "is the baseline" if name == base else "no baseline run")
        rows.append({"setting": name, "verdict": OFF_OVERALL, "vs_baseline": vs_base,
                     "not_distinct_from": "", "not_testable_with": ""})
    return pd.DataFrame(rows, columns=["setting", "verdict", "vs_baseline",
                                       "not_distinct_from", "not_testable_with"])


@dataclass(frozen=True)
class Analysis:
    """Everything the figures and reports draw from (see the module docstring)."""

    runs: pd.DataFrame
    settings: pd.DataFrame
    fronts: pd.DataFrame
    verdicts: pd.DataFrame
    series: pd.DataFrame
    ladder: pd.DataFrame

    def style(self, series: str) -> tuple[str, str]:
        """(colour, marker) of a series."""
        hit = self.series[self.series["series"] == series]
        return (str(hit["color"].iloc[0]), str(hit["marker"].iloc[0])) if len(hit) else \
            ("#8c564b", "P")

    def ordered_series(self, values) -> list[str]:
        """The series among ``values``, in the analysis's order."""
        present = {str(v) for v in values}
        return [s for s in dict.fromkeys(self.series["series"]) if s in present] + sorted(
            present - set(self.series["series"]))

    def label(self, setting: str) -> str:
        """The setting's front verdict (empty when it is not on the overall front)."""
        hit = self.verdicts.loc[self.verdicts["setting"] == setting, "verdict"]
        return str(hit.iloc[0]) if len(hit) else ""


def analyse(df: pd.DataFrame, baseline: str | None = None) -> Analysis:
    """The tidy runs table -> roles -> settings (mean, interval, n seeds) -> fronts on means ->
    tests. ``baseline``: a variant name overriding the recorded (or default) baseline."""
    from pipelines.analysis.data import tidy_runs
    from pipelines.analysis.ladder import split_ladder
    from pipelines.analysis.pareto import fronts_by
    from pipelines.analysis.roles import assign_roles, run_label, series_table

    runs, ladder = split_ladder(assign_roles(tidy_runs(df), baseline))
    series = series_table(runs)
    keys = [setting_key(r) for _, r in runs.iterrows()]
    labels = [run_label(r) for _, r in runs.iterrows()]
    names = [f"{s} {label}" if label else str(s) for label, s in zip(labels, runs["series"])]
    by_name: dict[str, list[str]] = {}
    for key, name in zip(keys, names):
        if key not in by_name.setdefault(name, []):
            by_name[name].append(key)
    names = [name if len(by_name[name]) == 1 else f"{name} #{by_name[name].index(key) + 1}"
             for key, name in zip(keys, names)]
    runs = runs.assign(setting=pd.Series(names, index=runs.index, dtype="string"),
                       _setting_key=keys)
    settings = summarise_settings(runs, series)
    runs = runs.drop(columns="_setting_key")
    ladder = ladder.merge(runs[["run_id", "setting", "series"]], on="run_id", how="left")
    if settings.empty or "miou" not in settings or "gflops_total" not in settings:
        measured = settings.iloc[0:0]
    else:
        measured = settings.dropna(subset=["miou", "gflops_total"])
    fronts = fronts_by(measured.assign(run_id=measured["setting"]), by="series") \
        if len(measured) else \
        measured.assign(front=pd.Series(dtype="string"), knee=pd.Series(dtype=bool))
    verdicts = front_verdicts(runs, settings, fronts)
    return Analysis(runs=runs, settings=settings, fronts=fronts, verdicts=verdicts,
                    series=series, ladder=ladder)


#: settings pairs x seeds up to which every pair of seeds is ranked at once (float32 matrices of
#: about 4 bytes an element: 40 MB); above it, one pair of seeds at a time
_ALL_PAIRS_AT_ONCE = 10_000_000


def ranking_stability(runs: pd.DataFrame, metric: str = contract.MIOU) -> pd.DataFrame:
    """How stable the ranking of settings is across seed sets: Kendall's tau (tau-b, as
    ``scipy.stats.kendalltau`` computes it) between the rankings of the settings by ``metric``
    under every pair of single seeds.

    Returns one row per pair of seeds: ``seed_a``, ``seed_b``, ``n_settings`` (settings run with
    both seeds) and ``tau`` (NaN with fewer than two common settings, or where one seed ranks
    every common setting the same). 1 = the same order, -1 = reversed, about 0 = unrelated.

    Every pair of seeds at once: with ``S[p, k]`` the sign of the difference between the two
    settings of settings pair ``p`` under seed ``k`` (0 where either was not run with it),
    tau-b of seeds a and b is ``S_a . S_b / sqrt(n_a n_b)``, ``n_a`` counting the pairs run with
    both seeds and not tied under a (two matrix products over the pairs). A load test of
    10,000 runs has 400 seeds, about 80,000 pairs of them: one scipy call per pair took minutes.
    """
    grid = runs[runs["role"] == contract.ROLE_RUN].dropna(subset=[contract.SEED, metric])
    table = grid.pivot_table(index="setting", columns=contract.SEED, values=metric,
                             aggfunc="mean")
    seeds = sorted(table.columns)
    columns = ["seed_a", "seed_b", "n_settings", "tau"]
    if len(seeds) < 2:
        return pd.DataFrame([], columns=columns)
    values = table[seeds].to_numpy(dtype=float)
    n = len(values)
    i, j = np.triu_indices(n, k=1)
    if len(i) * len(seeds) > _ALL_PAIRS_AT_ONCE:
        return _ranking_stability_pairwise(table, seeds, columns)
    present = ~np.isnan(values)
    run_with = present[i] & present[j]  # [p, k]: both settings of pair p run with seed k
    sign = np.sign(np.nan_to_num(values[i] - values[j], nan=0.0)).astype(np.float32)
    sign[~run_with] = 0.0
    both = run_with.astype(np.float32)
    concordance = sign.T @ sign  # (concordant - discordant) pairs of every pair of seeds
    untied = np.abs(sign).T @ both  # [a, b]: pairs run with both, not tied under a
    common = present.T.astype(np.int64) @ present.astype(np.int64)
    a, b = np.triu_indices(len(seeds), k=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = concordance[a, b] / np.sqrt(untied[a, b].astype(float) * untied[b, a])
    tau = np.where((common[a, b] >= 2) & np.isfinite(tau), np.clip(tau, -1.0, 1.0), np.nan)
    return pd.DataFrame({"seed_a": np.asarray(seeds, dtype=int)[a],
                         "seed_b": np.asarray(seeds, dtype=int)[b],
                         "n_settings": common[a, b].astype(int), "tau": tau.astype(float)},
                        columns=columns)


def _ranking_stability_pairwise(table: pd.DataFrame, seeds: list, columns: list) -> pd.DataFrame:
    """:func:`ranking_stability` one pair of seeds at a time (scipy), for tables too large to
    rank every pair at once (many settings)."""
    from scipy import stats

    rows = []
    for a, b in combinations(seeds, 2):
        both = table[[a, b]].dropna()
        tau = math.nan
        if len(both) >= 2:
            tau = float(stats.kendalltau(both[a], both[b]).statistic)
        rows.append({"seed_a": int(a), "seed_b": int(b), "n_settings": int(len(both)),
                     "tau": tau})
    return pd.DataFrame(rows, columns=columns)

"""The READMEs' results tables, generated from the recorded tables in ``tests/data/``.

    python -m pipelines.benchmarks.readme_tables            # rewrite every table where it lives
    python -m pipelines.benchmarks.readme_tables --check    # exit 1 naming each table that differs
    python -m pipelines.benchmarks.readme_tables --only demo
    python -m pipelines.benchmarks.readme_tables --files README.md configs/README.md

Each table sits in one of the markdown files :data:`DOCS` (``README.md``: ``demo``;
``configs/README.md``: ``search_replay``) between ``<!-- table:NAME -->`` and
``<!-- /table:NAME -->``; the text between the markers is replaced by what :data:`TABLES`
``[NAME]`` builds from its recorded CSV, so a number in a table is always the code's reading of
the recording. A table is looked up in every file given; it must be in exactly one of them.

* ``demo``: the demo DAG's settings (seeds pooled, 95 % Student-t intervals, paired t-test by
  seed against the baseline), from ``tests/data/runs_demo.csv`` (``make demo``'s
  ``results/figures/demo/runs.csv``) through the same analysis as the report
  (:func:`pipelines.analysis.settings.analyse`), with the ranking stability over seed pairs.
* ``search_replay``: the search efficiency benchmark (``python -m
  pipelines.benchmarks.search_replay``, 20 replay seeds per sampler) on
  ``tests/data/grid_lr.csv``.
"""
from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import warnings
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
#: the markdown files that hold the tables (a table's markers are in exactly one of them)
DOCS = (README, REPO / "configs" / "README.md")
DEMO_CSV = REPO / "tests" / "data" / "runs_demo.csv"
SMALL = ("small_blob", "small_stripes")
REPLAY_SEEDS = 20
SAMPLERS = (("tpe", "TPE (Optuna default, the space's sampler)"), ("random", "random (reference)"),
            ("nsga2", "NSGA-II"), ("gp", "GP"))


def demo_table(csv: Path = DEMO_CSV) -> str:
    """The demo's settings table and its ranking-stability line."""
    from pipelines.analysis.data import read_runs_csv
    from pipelines.analysis.settings import analyse, ranking_stability
    from pipelines.reports.tables import fmt_interval

    analysis = analyse(read_runs_csv(csv))
    verdicts = analysis.verdicts.set_index("setting") if len(analysis.verdicts) else None
    overall = analysis.fronts[analysis.fronts["front"] == "overall"]
    on_front = set(overall["setting"])
    head = ["setting", "seeds", "mIoU [95 % CI]", *(f"IoU {c}" for c in SMALL), "GFLOPs",
            "vs baseline"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in analysis.settings.iterrows():
        name = row["setting"]
        if bool(row["baseline"]):
            versus = "-"
        elif name not in on_front:
            versus = "(not on the front)"
        elif verdicts is not None and name in verdicts.index:
            versus = verdicts.loc[name, "vs_baseline"]
        else:
            versus = ""
        cells = [name, str(row["n_seeds"]), fmt_interval(row, "miou"),
                 *(fmt_interval(row, f"iou.{c}") for c in SMALL),
                 f"{row['gflops_total']:.3f}", versus]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    tau = ranking_stability(analysis.runs)["tau"]
    lines += ["", f"Ranking stability (Kendall's tau-b between the rankings of the settings by "
              f"mIoU under each pair of single seeds): mean **{tau.mean():.2f}** over the "
              f"{len(tau)} seed pairs (min {tau.min():.2f}, max {tau.max():.2f})."]
    return "\n".join(lines)


def replay_rows(samplers=tuple(s for s, _ in SAMPLERS), seeds: int = REPLAY_SEEDS) -> list[str]:
    """The search benchmark's rows (``python -m pipelines.benchmarks.search_replay``'s defaults:
    ``grid_lr.csv``, its space, ``seeds`` replays per sampler)."""
    import optuna

    from pipelines.benchmarks.search_replay import (
        BENCH_SPACE,
        BENCH_TABLE,
        hypervolume,
        load_table,
        quartiles,
        replay,
        run_cache,
    )
    from pipelines.search.space import load_search_space

    optuna.logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    spec = load_search_space(BENCH_SPACE)
    table = load_table(Path(BENCH_TABLE), spec)
    make_run = run_cache(spec)

    def cost(run):
        return table[run.run_id]["gflops_total"]

    grid_hv = hypervolume([(r["miou"], r["gflops_total"]) for r in table.values()],
                          spec.gflops_budget)
    names = dict(SAMPLERS)
    rows = []
    for sampler in samplers:
        runs = [replay(spec, table, sampler, seed, make_run, cost) for seed in range(seeds)]
        lo, q1, med, q3, hi = quartiles([r["hv"] / grid_hv for r in runs])
        trainings = statistics.median(r["trainings"] for r in runs)
        trials = statistics.median(r["trials"] for r in runs)
        cells = [names[sampler], *(f"{v:.3f}" for v in (med, lo, q1, q3, hi)),
                 f"{trainings:g}", f"{100 * trainings / len(table):.0f}",
                 str(sum(r["trainings"] - r["distinct"] for r in runs)),
                 str(sum(r["over_budget_trained"] for r in runs)), f"{trials:g}"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def replay_table() -> str:
    head = ["sampler", "HV ratio median", "min", "q1", "q3", "max", "trainings (median)",
            "% of grid", "trained twice", "over budget trained", "trials (median)"]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *replay_rows()])


TABLES: dict[str, Callable[[], str]] = {"demo": demo_table, "search_replay": replay_table}


def block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- table:{name} -->\n)(.*?)(\n<!-- /table:{name} -->)", re.S)


def readme_block(text: str, name: str) -> str:
    """The text between a table's markers in one file's ``text``."""
    found = block(name).search(text)
    if found is None:
        raise KeyError(f"no <!-- table:{name} --> ... <!-- /table:{name} -->")
    return found.group(2)


def table_file(name: str, texts: dict[Path, str]) -> Path:
    """The one file of ``texts`` (path -> text) that holds table ``name``."""
    holders = [path for path, text in texts.items() if block(name).search(text)]
    if len(holders) != 1:
        where = " and ".join(map(str, holders)) or "none of " + ", ".join(map(str, texts))
        raise KeyError(f"table {name} must be in exactly one file, found in {where}")
    return holders[0]


def table_text(name: str, files=DOCS) -> str:
    """The text between table ``name``'s markers, in whichever of ``files`` holds it."""
    texts = {Path(f): Path(f).read_text() for f in files}
    return readme_block(texts[table_file(name, texts)], name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a table differs from its recording")
    parser.add_argument("--only", nargs="+", choices=sorted(TABLES), default=sorted(TABLES))
    parser.add_argument("--files", "--readme", nargs="+", type=Path, default=list(DOCS),
                        help="the markdown files that hold the tables (default: %(default)s)")
    args = parser.parse_args(argv)
    texts = {}
    for path in args.files:
        try:
            texts[path] = path.read_text()
        except OSError as err:
            print(f"error: cannot read {path}: {err.strerror}", file=sys.stderr)
            return 2
    homes = {}
    for name in args.only:
        try:
            homes[name] = table_file(name, texts)
        except KeyError as err:
            print(f"error: {err.args[0]}", file=sys.stderr)
            return 2
    differ = []
    for name in args.only:
        path = homes[name]
        new = TABLES[name]()
        if new != readme_block(texts[path], name):
            differ.append(name)
            texts[path] = block(name).sub(lambda m: m.group(1) + new + m.group(3), texts[path])
    if args.check:
        for name in differ:
            print(f"{homes[name]}: table {name} differs from its recording "
                  "(python -m pipelines.benchmarks.readme_tables rewrites it)", file=sys.stderr)
        return 1 if differ else 0
    for path in dict.fromkeys(homes[name] for name in differ):
        path.write_text(texts[path])
    rewritten = ", ".join(f"{name} ({homes[name]})" for name in differ)
    print(f"{rewritten or 'no table'} rewritten; "
          f"{len(args.only) - len(differ)} already as recorded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: how much the demo's mIoU moves when the same recipe trains on another CPU.

    python -m pipelines.benchmarks.capability_spread [--out /tmp/capability_spread]
        [--profiles native avx2 default] [--seeds 0 1 2]
        [--settings baseline pro_scale-s1-1-1-trc-lpe] [--aten-only]

On the CPU a training is bit-reproducible on one machine, not across machines: ATen, oneDNN
(convolutions) and MKL (matrix products) each choose their kernels by the instruction sets the
CPU has, and a different kernel rounds differently; 90 iterations of SGD later the difference is
points of mIoU. This script stands in for other CPUs by capping those choices on this one, one
*profile* per CPU class:

    native   nothing set: what this CPU picks by itself
    avx512   ATEN_CPU_CAPABILITY=avx512, ONEDNN_MAX_CPU_ISA=AVX512_CORE,
             MKL_ENABLE_INSTRUCTIONS=AVX512 (an AVX-512 CPU without AMX)
    avx2     ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2
             (a Haswell..Zen 3 class CPU)
    default  ATEN_CPU_CAPABILITY=default, ONEDNN_MAX_CPU_ISA=SSE41,
             MKL_ENABLE_INSTRUCTIONS=SSE4_2 (a CPU without AVX)

``--aten-only`` sets ATEN_CPU_CAPABILITY alone (oneDNN and MKL keep their own choice), which
moves fewer kernels. A level above what the CPU has falls back to the CPU's own: the script reads
the level ATen really used from each training's provenance (``cpu.aten_capability`` in
train_done.json) and marks the profiles that were not distinct.

Every training and evaluation is the pipeline's own CLI with the demo's options
(``python -m pipelines train`` / ``evaluate`` exactly as ``workflow/rules/train.smk`` calls them,
``OMP_NUM_THREADS`` = the demo's one thread per training), in folders under ``--out`` (never the
checkout's results/). Finished trainings and evaluations are kept, so a second call resumes.
Prints and writes ``summary.json`` and ``summary.md`` under ``--out``: mIoU per profile, setting
and seed; the spread (max - min over profiles) per setting and seed; and per profile the paired
effect of each setting against the baseline (mean difference over seeds, paired t-test).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipelines.grid.render import render_run, write_configs

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "ablations" / "demo.yaml"

PROFILES = {
    "native": {},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
# the /proc/cpuinfo flag a profile needs; without it the libraries fall back to a lower level
NEEDS_FLAG = {"avx512": "avx512f", "avx2": "avx2"}
BASELINE = "baseline"


def setting_of(run) -> str:
    """A run's setting: its id without the seed part (``baseline``, ``pro_scale-s1-1-1-trc-lpe``)."""
    suffix = f"-seed{run.settings['seed']}"
    return run.run_id[: -len(suffix)] if run.run_id.endswith(suffix) else run.run_id


def profile_env(name: str, aten_only: bool) -> dict[str, str]:
    env = dict(PROFILES[name])
    if aten_only:
        env = {k: v for k, v in env.items() if k == "ATEN_CPU_CAPABILITY"}
    return env


def _run(cmd: list[str], env: dict, log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}); see {log}")
    return time.perf_counter() - start


def base_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                        "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    return env


def train_and_evaluate(run, profile: str, extra_env: dict, out: Path, data_root: Path,
                       threads: int) -> dict:
    """One training + evaluation of ``run`` under ``profile`` (kept when already done)."""
    folder = out / profile / run.run_id
    work = folder / "work"
    done, metrics = work / "train_done.json", folder / "metrics.json"
    folder.mkdir(parents=True, exist_ok=True)
    env = base_env(threads)
    env.update(extra_env)
    timing = {}
    config = folder / "config.py"  # the run's rendered config, as the workflow writes it
    write_configs([(config, render_run(run, REPO))])
    if not done.is_file():
        timing["train_s"] = _run(
            [sys.executable, "-m", "pipelines", "train", str(config), "--work-dir", str(work),
             "--data-root", str(data_root), "--done-file", str(done), "--record-failure", "0",
             "--nproc", "1"], env, folder / "train.log")
    if not metrics.is_file():
        timing["evaluate_s"] = _run(
            [sys.executable, "-m", "pipelines", "evaluate", str(config), "--train-done",
             str(done), "--out", str(metrics), "--work-dir", str(folder / "eval"),
             "--data-root", str(data_root), "--record-failure", "0"], env,
            folder / "evaluate.log")
    done_doc = json.loads(done.read_text())
    cpu = (done_doc.get("provenance") or {}).get("cpu") or {}
    m = json.loads(metrics.read_text())
    return {"profile": profile, "setting": setting_of(run), "seed": run.settings["seed"],
            "run_id": run.run_id, "train_recipe": run.train_recipe, "miou": m["miou"],
            "per_class_iou": m.get("per_class_iou"), "train_time_s": done_doc.get("train_time_s"),
            "aten_capability": cpu.get("aten_capability"), "cpu_model": cpu.get("model"),
            "env": cpu.get("env"), **timing}


def _t_test(diffs: list[float]) -> float | None:
    if len(diffs) < 2:
        return None
    try:
        from scipy import stats

        if statistics.pstdev(diffs) == 0:
            return None
        return float(stats.ttest_1samp(diffs, 0.0).pvalue)
    except ImportError:
        return None


def metric_of(row: dict, metric: str) -> float | None:
    """``miou`` or the IoU of one class (``small_blob``) of a row."""
    if metric == "miou":
        return row["miou"]
    return (row.get("per_class_iou") or {}).get(metric)


def _table(rows: list[dict], metric: str) -> dict:
    out = {}
    for r in rows:
        value = metric_of(r, metric)
        if value is not None:
            out[r["profile"], r["setting"], r["seed"]] = value
    return out


def summarise(rows: list[dict], profiles: list[str], settings: list[str],
              seeds: list[int], metric: str = "miou") -> dict:
    miou = _table(rows, metric)
    spread = {}
    for setting in settings:
        for seed in seeds:
            vals = [miou[p, setting, seed] for p in profiles if (p, setting, seed) in miou]
            if len(vals) >= 2:
                spread[f"{setting}/seed{seed}"] = max(vals) - min(vals)
    effects = {}
    for p in profiles:
        for setting in settings:
            if setting == BASELINE:
                continue
            diffs = [miou[p, setting, s] - miou[p, BASELINE, s] for s in seeds
                     if (p, setting, s) in miou and (p, BASELINE, s) in miou]
            if diffs:
                effects[f"{p}/{setting}"] = {
                    "n": len(diffs), "diffs": diffs, "mean": statistics.fmean(diffs),
                    "p": _t_test(diffs)}
    means = {}
    for p in profiles:
        for setting in settings:
            vals = [miou[p, setting, s] for s in seeds if (p, setting, s) in miou]
            if vals:
                means[f"{p}/{setting}"] = statistics.fmean(vals)
    levels = {}
    for r in rows:
        levels.setdefault(r["profile"], set()).add(r["aten_capability"])
    return {"spread": spread, "max_spread": max(spread.values(), default=None),
            "mean_spread": statistics.fmean(spread.values()) if spread else None,
            "effects": effects, "means": means,
            "aten_levels": {p: sorted(str(x) for x in v) for p, v in levels.items()}}


def markdown(rows, summary, profiles, settings, seeds, header: str,
             metric: str = "miou") -> str:
    miou = _table(rows, metric)
    lines = [header, "", "| setting | seed | " + " | ".join(profiles) + " | spread |",
             "|---|---|" + "---|" * (len(profiles) + 1)]
    for setting in settings:
        for seed in seeds:
            cells = [f"{miou[p, setting, seed]:.2f}" if (p, setting, seed) in miou else "-"
                     for p in profiles]
            sp = summary["spread"].get(f"{setting}/seed{seed}")
            sp_text = "-" if sp is None else f"{sp:.2f}"
            lines.append(f"| {setting} | {seed} | " + " | ".join(cells) + f" | {sp_text} |")
    lines += ["", f"| profile (ATen level used) | setting | mean {metric} | paired Δ vs baseline "
              "(per seed) | p (paired t) |", "|---|---|---|---|---|"]
    for p in profiles:
        for setting in settings:
            mean = summary["means"].get(f"{p}/{setting}")
            if mean is None:
                continue
            eff = summary["effects"].get(f"{p}/{setting}")
            if eff:
                per = ", ".join(f"{d:+.2f}" for d in eff["diffs"])
                pv = "-" if eff["p"] is None else f"{eff['p']:.3f}"
                lines.append(f"| {p} ({', '.join(summary['aten_levels'].get(p, []))}) | "
                             f"{setting} | {mean:.2f} | {eff['mean']:+.2f} ({per}) | {pv} |")
            else:
                lines.append(f"| {p} ({', '.join(summary['aten_levels'].get(p, []))}) | "
                             f"{setting} | {mean:.2f} | - | - |")
    if summary["max_spread"] is not None:
        lines += ["", f"Spread over profiles (max - min {metric} of one recipe and seed): "
                  f"mean {summary['mean_spread']:.2f}, max {summary['max_spread']:.2f}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEMO), help="ablation config (default: the demo)")
    parser.add_argument("--out", default="/tmp/capability_spread")
    parser.add_argument("--profiles", nargs="+", default=["native", "avx2", "default"],
                        choices=sorted(PROFILES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="seeds to train (those the config lacks are added to its grid)")
    parser.add_argument("--settings", nargs="+", default=[BASELINE, "pro_scale-s1-1-1-trc-lpe"],
                        help="settings of the config (run ids without -seedN)")
    parser.add_argument("--aten-only", action="store_true",
                        help="set ATEN_CPU_CAPABILITY only (oneDNN and MKL choose for themselves)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS (the demo: 1)")
    parser.add_argument("--metrics", nargs="+", default=["miou", "small_blob"],
                        help="miou and/or class names whose IoU to tabulate")
    args = parser.parse_args(argv)

    from pipelines.grid import expand_grid, load_ablation, validate_ablation
    from pipelines.tracking import provenance

    out = Path(args.out).resolve()
    if out == REPO or REPO in out.parents and out.relative_to(REPO).parts[0] in ("results",
                                                                                 "data"):
        parser.error("--out must not be under the checkout's results/ or data/")
    out.mkdir(parents=True, exist_ok=True)
    ablation = validate_ablation(load_ablation(args.config))
    # seeds beyond the config's (more seeds of the same recipes: a different demo's question)
    ablation["grid"]["seed"] = sorted(set(ablation["grid"]["seed"]) | set(args.seeds))
    runs = [r for r in expand_grid(ablation, repo=REPO)
            if setting_of(r) in args.settings and r.settings["seed"] in args.seeds]
    missing = set(args.settings) - {setting_of(r) for r in runs}
    if missing:
        parser.error(f"settings not in {args.config}: {sorted(missing)}")

    cpu = provenance.cpu_state()
    flags = set(cpu["flags"] or [])
    fallback = {p: NEEDS_FLAG[p] for p in args.profiles
                if p in NEEDS_FLAG and NEEDS_FLAG[p] not in flags}
    print(f"CPU: {cpu['model']} ({cpu['machine']}), flags {cpu['flags']}, "
          f"native ATen level {cpu['aten_capability']}", flush=True)
    for p, flag in fallback.items():
        print(f"profile {p}: this CPU has no {flag}; it falls back to a lower level "
              f"(not a distinct CPU class here)", flush=True)

    spec = ablation["data"]["synthetic"]
    data_root = out / "data"
    if not (data_root / "meta.json").is_file():
        subprocess.run([sys.executable, "-m", "pipelines", "data", "synthetic", "--out",
                        str(data_root), "--train", str(spec["train"]), "--val", str(spec["val"]),
                        "--size", str(spec["size"]), "--seed", str(spec["seed"]),
                        "--no-progress"], check=True, cwd=REPO, env=base_env(args.threads),
                       stdout=subprocess.DEVNULL)

    rows = []
    by_key = {(setting_of(r), r.settings["seed"]): r for r in runs}
    # seed-major order: a run cut short still has whole (setting, seed) rows across profiles
    for seed in args.seeds:
        for setting in args.settings:
            run = by_key[setting, seed]
            for profile in args.profiles:
                t0 = time.perf_counter()
                row = train_and_evaluate(run, profile, profile_env(profile, args.aten_only),
                                         out, data_root, args.threads)
                rows.append(row)
                print(f"{profile:8s} {run.run_id:34s} ATen {row['aten_capability']:8s} "
                      f"mIoU {row['miou']:6.2f}  ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
                (out / "rows.json").write_text(json.dumps(rows, indent=1))

    summaries = {m: summarise(rows, args.profiles, args.settings, args.seeds, m)
                 for m in args.metrics}
    header = (f"Capability spread of `{Path(args.config).name}` on {cpu['model']} "
              f"(native ATen {cpu['aten_capability']}, flags {' '.join(cpu['flags'] or [])}); "
              f"profiles {'ATEN_CPU_CAPABILITY only' if args.aten_only else 'ATen+oneDNN+MKL'}, "
              f"OMP_NUM_THREADS={args.threads}.")
    text = "\n".join(markdown(rows, summaries[m], args.profiles, args.settings, args.seeds,
                              header if i == 0 else f"{m}:", m)
                     for i, m in enumerate(args.metrics))
    (out / "summary.json").write_text(json.dumps(
        {"cpu": cpu, "profiles": {p: profile_env(p, args.aten_only) for p in args.profiles},
         "fallback": fallback, "rows": rows, "metrics": summaries}, indent=1, default=str))
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

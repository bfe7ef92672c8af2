"""``python -m pipelines grid``: an ablation's runs (ids, recipes), one run's ``run.json``
(:func:`write_run_json`, as the workflow's ``list_runs`` writes every run's), or the axis aliases
a model config offers."""
from __future__ import annotations

import json
from pathlib import Path

from pipelines import axes as ax
from pipelines.axes import Axis
from pipelines.errors import UserError
from pipelines.grid.expand import BUILTIN_AXES, expand_grid
from pipelines.grid.plain_config import resolved_base
from pipelines.grid.run import ID_RE
from pipelines.grid.schema import load_ablation, validate_ablation


def add_parser(sub) -> None:
    p = sub.add_parser("grid", help="expand an ablation config into its runs (ids, settings)",
                       description="Validate an ablation config against the schema and list "
                       "its runs, or write one run's resolved settings as JSON.")
    p.add_argument("ablation", nargs="?", help="configs/ablations/*.yaml")
    p.add_argument("--json", action="store_true", help="print every run as JSON")
    p.add_argument("--render", metavar="DIR", help="write every run's rendered config (the "
                   "file its stages read) to DIR/<run-id>/config.py")
    p.add_argument("--axes", metavar="MODEL_CONFIG", help="list the axis aliases a model config "
                   "offers (any config key is an axis too)")
    p.add_argument("--run", metavar="JSON", help="(used by the workflow) one run's resolved "
                   "settings as JSON, written to --out as is after a check")
    p.add_argument("--out", help="with --run: run.json to write")
    p.set_defaults(func=run_cli)


def write_run_json(path, run: dict) -> None:
    """A run's run.json (``Run.to_dict()``), its keys sorted at every level: the same bytes
    whoever writes it (ingest's fingerprint reads them)."""
    from pipelines.config import write_json_atomic

    write_json_atomic(path, json.loads(json.dumps(run, sort_keys=True)))


def write_runs(runs, results: str, ablation: str, manifest: str, log: str | None = None
               ) -> list[str]:
    """Every run's run.json in its recipe's folder (:class:`RunPaths`) and ``manifest``, the
    list of them, one per line (what the workflow's ``list_runs`` writes, with a line in
    ``log``); returns the list."""
    from pipelines.config import write_lines_atomic
    from pipelines.grid.run import RunPaths, run_document

    files = []
    for run in runs:
        path = RunPaths.of(results, ablation, run).run_json
        write_run_json(path, run_document(run, results, ablation))
        files.append(str(path))
    write_lines_atomic(manifest, files)
    if log:
        Path(log).write_text(f"{len(files)} runs -> {manifest}\n")
    return files


def run_cli(args) -> int:
    if args.run:
        if not args.out:
            raise UserError("--run needs --out")
        try:
            data = json.loads(args.run)
        except json.JSONDecodeError as err:
            raise UserError(f"--run: not JSON: {err}") from None
        if not isinstance(data, dict) or "run_id" not in data or not ID_RE.match(data["run_id"]):
            raise UserError("--run: expected an object with a valid run_id")
        write_run_json(args.out, data)
        return 0
    if args.axes:
        check_model_config(args.axes)
        for name, axis in axes_table(args.axes):
            extra = f" [{axis.stage} stage]" if axis.stage != "train" else ""
            print(f"{name:<18} -> {axis.key}  ({axis.type}){extra}  {axis.help}")
        return 0
    if not args.ablation:
        raise UserError("give an ablation config (configs/ablations/*.yaml)")
    config = validate_ablation(load_ablation(args.ablation))
    runs = expand_grid(config)
    if args.render:
        from pipelines.config import ensure_writable_dir
        from pipelines.grid.render import render_run, write_configs

        folder = ensure_writable_dir(args.render, "--render folder")
        write_configs(((folder / r.run_id / "config.py", render_run(r)) for r in runs),
                      replace=True)
        print(f"{config['name']}: {len(runs)} run configs in {folder}/<run-id>/config.py")
        return 0
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
    else:
        print(f"{config['name']}: {len(runs)} runs")
        for r in runs:
            print(f"  {r.run_id}  ({r.config}, {r.max_iters} iters, recipe {r.recipe})")
    return 0


def axes_table(config: str | Path) -> list[tuple[str, Axis]]:
    """The aliases a model config offers (for ``python -m pipelines grid --axes CONFIG``)."""
    plain = resolved_base(config)
    out = list(BUILTIN_AXES.items())
    for method in ax.methods_of_config(plain):
        out += list(ax.method_axes(method).items())
    return out


def check_model_config(path: str | Path) -> None:
    """``path`` is a model config (a ``.py`` file with a ``model``) whose model builds."""
    from pipelines.config import load_config

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    if path.suffix != ".py":
        raise UserError(f"{path}: not a model config (configs/models/*.py); an ablation "
                        f"config is listed by `python -m pipelines grid {path}`")
    cfg = load_config(path)
    if not isinstance(cfg.get("model"), dict):
        raise UserError(f"{path}: not a model config (it defines no `model`)")
    from pipelines.stages.flops import build_model

    build_model(cfg)  # an unknown type or a value its class refuses: one line

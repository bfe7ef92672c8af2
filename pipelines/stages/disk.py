"""``python -m pipelines disk``: bounded disk, estimated before an ablation trains.

Checkpoints (applied by ``train``): while a training runs, mmengine's ``CheckpointHook`` keeps
the last ``max_keep_ckpts`` resume checkpoints (weights, optimizer state, schedulers, random
states: :mod:`pipelines.stages.resume`) and, with ``save_best``, one best checkpoint (weights only). A
config that leaves ``max_keep_ckpts`` unbounded (MMSeg's R50 recipe: one checkpoint per 5,000
of 160,000 iterations, 32 per run) or sets 1 keeps :data:`DEFAULT_KEEP` (2: mmengine deletes the
oldest before writing the next, so one complete checkpoint is always left). When the training
finishes, :func:`finalize` writes its weights alone (state dict + meta, what evaluation and
``load_from`` fine-tuning read) under the last checkpoint's name, checks the file, and only then
deletes the resume checkpoints: a finished training keeps its weights and the best.

The estimate: per training, the parameter count of its model (built from the config, random
weights) x 4 bytes kept when it is done (the final weights, plus the best); while it runs, x
(1 + the optimizer's state tensors per parameter) per resume checkpoint, plus the final file
being written. The total is what every training keeps plus the running extra of the ``jobs``
largest (the trainings running at once). The Snakefile's ``onstart`` hook
runs it (in its own process) whenever trainings are pending, after the DAG is built and before
any job starts: it prints the estimate and stops the workflow in one line when the results
folder's file system cannot hold what is still missing.

Why not a job the trainings depend on: the estimate must be redone when the set of runs
changes, and Snakemake 9 (snakemake/snakemake#4166) then leaves out a missing training that
depends on it through ``ancient()``: the job is masked below the rerun estimate and an ancient
input never marks it. Without ``ancient()`` every finished training would run again.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from pipelines.errors import UserError

# resume checkpoints kept when a config does not bound them, and the least kept: mmengine deletes
# the oldest *before* it writes the next, so with one a kill during that write leaves none
DEFAULT_KEEP = 2
# optimizer state tensors per parameter (Adam's two moments, SGD's momentum buffer)
OPTIMIZER_STATES = {"AdamW": 2, "Adam": 2, "SGD": 1}
BYTES_PER_VALUE = 4  # float32


def add_parser(sub) -> None:
    p = sub.add_parser("disk", help="estimate the checkpoint disk an ablation needs; refuse "
                       "when the results folder cannot hold it", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_JSON",
                   help="run.json of every run (a file holding a JSON list counts as its runs)")
    p.add_argument("--results", required=True, help="results folder (its file system is checked)")
    p.add_argument("--ablation", help="ablation name (checkpoints already under "
                   "results/train/<ablation> count as written)")
    p.add_argument("--out", help="write the estimate as JSON here")
    p.add_argument("--margin", type=float, default=1.2,
                   help="safety factor on the estimate (default 1.2)")
    p.add_argument("--jobs", type=int, default=1,
                   help="trainings running at once (each holds its resume checkpoints while "
                   "it runs; default 1)")
    p.set_defaults(func=run)


def read_run_files(paths: Iterable[str]) -> list[dict]:
    """The runs of ``run.json`` files (``python -m pipelines grid --run``), in order."""
    runs = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read run file {path}: {err}") from None
        runs.extend(data if isinstance(data, list) else [data])
    return runs


def apply_retention(cfg) -> int:
    """Bound the checkpoints a config keeps; returns the number of resume checkpoints kept."""
    hook = (cfg.get("default_hooks") or {}).get("checkpoint")
    if not hook:
        return 0
    keep = hook.get("max_keep_ckpts", -1)
    if keep is None or keep < DEFAULT_KEEP:
        hook["max_keep_ckpts"] = keep = DEFAULT_KEEP
    return int(keep)


def checkpoints_kept(cfg) -> tuple[int, int]:
    """``(resume checkpoints, best checkpoints)`` a training of ``cfg`` leaves on disk."""
    hook = (cfg.get("default_hooks") or {}).get("checkpoint") or {}
    if not hook:
        return 0, 0
    interval = max(1, int(hook.get("interval", 1)))
    written = max(1, int(cfg.train_cfg.get("max_iters", interval)) // interval)
    keep = apply_retention(cfg)
    return min(keep, written), 1 if hook.get("save_best") else 0


def optimizer_states(cfg) -> int:
    optimizer = (cfg.get("optim_wrapper") or {}).get("optimizer") or {}
    return OPTIMIZER_STATES.get(str(optimizer.get("type", "")).split(".")[-1], 2)


def training_bytes(n_params: int, cfg) -> int:
    """Bytes a finished training of ``cfg`` keeps: its final weights and the best."""
    _, best = checkpoints_kept(cfg)
    return (1 + best) * n_params * BYTES_PER_VALUE


def running_bytes(n_params: int, cfg) -> int:
    """Bytes a training of ``cfg`` holds at most while it runs: its resume checkpoints, the
    best, and the final weights being written beside the last resume checkpoint."""
    resume, best = checkpoints_kept(cfg)
    full = n_params * BYTES_PER_VALUE * (1 + optimizer_states(cfg))
    return resume * full + (1 + best) * n_params * BYTES_PER_VALUE


def estimate(runs: list[dict], jobs: int = 1) -> dict[str, Any]:
    """Per training (train id) its parameter count and checkpoint bytes (kept when done, and
    at most while running), and the total with ``jobs`` trainings running at once."""
    from pipelines.config import load_config
    from pipelines.registry import build_model

    params_of: dict[str, int] = {}
    trainings: dict[str, dict] = {}
    for run in runs:
        train_id = run.get("train_id") or run["run_id"]
        if train_id in trainings:
            continue
        cfg = load_config(run["config_file"])  # the run's rendered config (run.json)
        # the parameter count depends on the model block alone (trainings that differ in the
        # learning rate or seed build one model)
        key = json.dumps(cfg.model.to_dict(), sort_keys=True, default=str)
        if key not in params_of:
            model = build_model(cfg)
            params_of[key] = sum(p.numel() for p in model.parameters())
            del model
        resume, best = checkpoints_kept(cfg)
        trainings[train_id] = {"params": params_of[key], "resume_checkpoints": resume,
                               "best_checkpoints": best,
                               "bytes": training_bytes(params_of[key], cfg),
                               "running_bytes": running_bytes(params_of[key], cfg)}
    extra = sorted((t["running_bytes"] - t["bytes"] for t in trainings.values()), reverse=True)
    total = sum(t["bytes"] for t in trainings.values()) + sum(extra[:max(1, int(jobs))])
    return {"trainings": trainings, "total_bytes": total, "jobs": max(1, int(jobs))}


def used_bytes(results: Path, ablation: str | None, trainings: Iterable[str] | None = None) -> int:
    """Bytes of checkpoints already written under ``results/train/<ablation>``; with
    ``trainings``, only in those trainings' folders (a run the config no longer lists keeps
    its checkpoints, but they are not part of what this ablation still has to write)."""
    root = results / "train" / ablation if ablation else results / "train"
    if not root.is_dir():
        return 0
    folders = [root] if trainings is None else [root / t for t in trainings]
    return sum(p.stat().st_size for folder in folders if folder.is_dir()
               for p in folder.rglob("*.pth") if p.is_file())


def finalize(runner) -> Path:
    """Keep what a finished training's users need, not its resume state (see the module doc).

    Writes the weights (state dict, meta marked ``final``, message hub) under the name of the
    last checkpoint, ``iter_<N>.pth``: first beside it as a hidden ``.part`` file, read back and
    compared tensor by tensor with the model, then moved over it; ``last_checkpoint`` names it;
    only then are the other ``iter_*.pth`` (resume checkpoints) deleted. A kill at any point
    leaves either the resume checkpoints or the verified final file. Main process only.

    Returns:
        The final checkpoint's path.
    """
    import torch
    from mmengine.model import is_model_wrapper

    work = Path(runner.work_dir)
    step = int(runner.iter)
    final = work / f"iter_{step}.pth"
    part = work / f".{final.name}.part"
    runner.save_checkpoint(str(work), part.name, save_optimizer=False,
                           save_param_scheduler=False, by_epoch=False,
                           meta={"iter": step, "epoch": int(runner.epoch), "final": True})
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    expected = model.state_dict()
    written = torch.load(part, map_location="cpu", weights_only=True)["state_dict"]
    if list(written) != list(expected) or not all(
            torch.equal(written[k], expected[k].detach().cpu()) for k in expected):
        part.unlink(missing_ok=True)
        raise RuntimeError(f"the final checkpoint {part} does not read back as the model's "
                           "weights; the resume checkpoints are kept")
    os.replace(part, final)
    marker = work / "last_checkpoint"
    marker_part = work / ".last_checkpoint.part"
    marker_part.write_text(str(final))
    os.replace(marker_part, marker)
    for old in work.glob("iter_*.pth"):
        if old != final:
            old.unlink(missing_ok=True)
    return final


def free_bytes(path: Path) -> int:
    """Free bytes of the file system that holds ``path`` (its nearest existing parent)."""
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check(runs: list[dict], results: str | Path, ablation: str | None, *,
          out: str | Path | None = None, margin: float = 1.2, jobs: int = 1) -> dict[str, Any]:
    """Estimate, print one line, and raise :class:`UserError` when the results folder's file
    system cannot hold the checkpoints still to be written; the estimate goes to ``out``."""
    import pipelines.registry  # noqa: F401
    from pipelines.config import write_json_atomic

    doc = estimate(runs, jobs)
    results = Path(results)
    needed = int(doc["total_bytes"] * margin)
    have = used_bytes(results, ablation, doc["trainings"] if ablation else None)
    free = free_bytes(results)
    doc.update(margin=margin, needed_bytes=needed, already_written_bytes=have, free_bytes=free)
    print(f"disk: {len(doc['trainings'])} trainings keep about {gib(doc['total_bytes'])} of "
          f"checkpoints (x{margin} margin: {gib(needed)}; {gib(have)} already written); "
          f"{gib(free)} free under {results}")
    if needed - have > free:
        raise UserError(f"the results folder {results} has {gib(free)} free but the ablation "
                        f"needs about {gib(needed - have)} more for its checkpoints; free "
                        "space, move `results`, or keep fewer checkpoints")
    if out:
        write_json_atomic(out, doc)
    return doc


def run(args: argparse.Namespace) -> int:
    check(read_run_files(args.runs), args.results, args.ablation, out=args.out,
          margin=args.margin, jobs=args.jobs)
    return 0

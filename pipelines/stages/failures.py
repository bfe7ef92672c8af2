"""Failures that stay local: a stage that fails on its last attempt leaves a failure record.

A Snakemake job that exits non-zero blocks every job downstream of it, and with them the
ablation's ingest, report and figures, even under ``--keep-going``. So the per-run stages
(``train``, ``evaluate``, ECO-M2F's ``derive-exits``, ``train-gate`` and ``evaluate-gated``,
all through :func:`run_stage`; ``flops``) take ``--record-failure 1``, which the rules pass on a
job's *last* attempt only: an earlier attempt fails as usual (Snakemake marks the job failed
and retries it); the last attempt writes its declared output as a failure record instead

    {"status": "failed", "stage": "train", "reason": "NonFiniteLossError: loss is nan ..."}

and exits 0, so the rest of the DAG goes on. A stage whose input is a failure record writes
its own record naming the upstream stage; ``ingest`` records such a run in MLflow with status
FAILED and the reason under :data:`pipelines.contract.FAILURE_TAG`; the report lists it. To run
a failed training again with the same recipe, delete its record (ingest prints its path); a
changed config is a new recipe and runs by itself, and its ingest replaces the failed child.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Iterator, Sequence

FAILED = "failed"


def failure_record(stage: str, err: BaseException) -> dict[str, Any]:
    """The JSON a failed ``stage`` leaves: one-line reason plus the traceback."""
    text = str(err).strip().splitlines()
    reason = f"{type(err).__name__}: {text[0] if text else ''}".strip().rstrip(":")
    if type(err).__name__ == "UserError":
        reason = text[0] if text else "bad input"
    return {"status": FAILED, "stage": stage, "reason": reason,
            "traceback": "".join(traceback.format_exception(err))[-4000:]}


def read_failure(path: str | Path) -> dict[str, Any] | None:
    """The failure record at ``path``, or None (no file, not JSON, or a normal output)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("status") == FAILED:
        return data
    return None


def upstream_failure(stage: str, upstream: dict[str, Any]) -> dict[str, Any]:
    """The record of a stage that did not run because its input is a failure record."""
    return {"status": FAILED, "stage": upstream.get("stage", stage),
            "reason": upstream.get("reason", "upstream stage failed"),
            "skipped": stage}


@contextlib.contextmanager
def recording_failures(out: str | Path | None, stage: str, record: bool) -> Iterator[None]:
    """Run a stage; on an exception write ``out`` as a failure record when ``record`` is set.

    Without ``record`` (or without ``out``) the exception propagates unchanged. With it, the
    exception becomes the record at ``out`` and a one-line message on stderr, and the block's
    caller goes on (the stage then exits 0). ``KeyboardInterrupt`` always propagates.
    """
    try:
        yield
    except Exception as err:  # noqa: BLE001 - every failure of the stage is recorded
        if not (record and out):
            raise
        from pipelines.config import write_json_atomic

        data = failure_record(stage, err)
        print(data["traceback"], file=sys.stderr)
        write_json_atomic(out, data)
        print(f"{stage} failed: {data['reason']} (recorded in {out})", file=sys.stderr)


def run_stage(stage: str, fn, args, *, outs: Sequence = (), upstreams: Sequence = (),
              record: bool = False) -> int:
    """Run ``fn(args)`` as the workflow stage ``stage`` over its JSON outputs ``outs``.

    The one wrapper every stage CLI that writes a failure record goes through (``train``,
    ``evaluate``, ``derive-exits``, ``train-gate``, ``evaluate-gated``):

    * a failure record among ``upstreams`` (the previous stage's JSON) is passed on to every
      output and nothing runs (exit status 0);
    * with ``record`` (the rule's last attempt), a failure of ``fn`` is written to every output
      (:func:`recording_failures`) and the exit status is 0; without it, it propagates.

    Empty entries of ``outs`` and ``upstreams`` (an option not given) are skipped.
    """
    from pipelines.config import write_json_atomic

    outs = [Path(o) for o in outs if o]
    for path in (u for u in upstreams if u):
        failure = read_failure(path)
        if failure is not None:
            for out in outs:
                write_json_atomic(out, upstream_failure(stage, failure))
            print(f"{stage}: not run, {failure.get('stage', 'upstream')} failed "
                  f"({failure.get('reason')})")
            return 0
    with recording_failures(outs[0] if outs else None, stage, record):
        return fn(args)
    for out in outs[1:]:  # only reached when the failure was recorded in outs[0]
        shutil.copy(outs[0], out)
    return 0


#: exit status of a workflow that finished but in which some runs failed (their records are
#: ingested and reported like the rest; the status says not every run has a result)
SOME_RUNS_FAILED = 3


def failed_runs(outputs: dict[str, list[str | Path]]) -> dict[str, dict[str, Any]]:
    """``{run id: failure record}`` over each run's output files (in stage order, the first
    record wins: a training's failure, not the evaluation that skipped after it)."""
    out = {}
    for run_id, paths in outputs.items():
        for path in paths:
            record = read_failure(path)
            if record is not None:
                out[run_id] = record
                break
    return out


def summary_lines(failed: dict[str, dict[str, Any]], total: int) -> list[str]:
    """What the end of a workflow prints about its failed runs (nothing when none failed)."""
    if not failed:
        return []
    lines = [f"{len(failed)} of {total} runs failed (their records are ingested and reported; "
             f"exit status {SOME_RUNS_FAILED}):"]
    lines += [f"  {run_id}: {rec.get('stage', '?')}: {rec.get('reason', '?')}"
              for run_id, rec in sorted(failed.items())]
    return lines

"""Ingest never loses a finished run: bad input and unwritable stores are refused in
one line (exit 2) with the store untouched; a replacement is complete before the child it
replaces is retired; only a complete child is ``unchanged``; a good child is kept over a worse
record of its recipe. Real MLflow (SQLite store, file artifact store) throughout."""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import pytest

from pipelines import contract as c
from pipelines.cli import main
from pipelines.grid import RunPaths
from tests.unit.test_tracking import write_results

ABL = "abl"


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """A migrated, empty SQLite store, made once (MLflow's migrations take ~8 s); tests copy it."""
    from pipelines.tracking.store import open_client

    path = tmp_path_factory.mktemp("template") / "empty.db"
    open_client(f"sqlite:///{path}").search_experiments()
    return path


class Store:
    """One test's store: a copy of the empty one, its artifact folder, and the CLI on it."""

    def __init__(self, root: Path, template: Path):
        self.db = root / "mlflow.db"
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, self.db)
        self.uri = f"sqlite:///{self.db}"
        self.art = root / "art"

    def ingest(self, capsys, results, jsons, *extra, ablation=ABL, uri=None, art=None):
        """``python -m pipelines ingest`` in process: (exit status, stdout, stderr)."""
        capsys.readouterr()
        rc = main(["ingest", "--ablation", ablation, "--tracking-uri", uri or self.uri,
                   "--artifact-location", str(art or self.art), *extra,
                   *(["--results", str(results)] if results is not None else []),
                   "--runs", *jsons])
        out = capsys.readouterr()
        return rc, out.out, out.err

    def client(self):
        from pipelines.tracking.store import open_client

        return open_client(self.uri)

    def points(self) -> dict[str, list]:
        """run id -> its active data-point children (the analysis' view)."""
        client = self.client()
        exp = client.get_experiment_by_name(ABL)
        out: dict[str, list] = {}
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            if run.data.tags.get(c.ROLE_TAG) in c.POINT_ROLES:
                out.setdefault(run.data.tags[c.RUN_ID_TAG], []).append(run)
        return out

    def snapshot(self) -> tuple:
        """Bytes of the store and every file under the artifact folder (untouched = equal)."""
        files = sorted(p for p in self.art.rglob("*") if p.is_file()) if self.art.is_dir() else []
        return (hashlib.sha256(self.db.read_bytes()).hexdigest(),
                [(str(p), p.read_bytes()) for p in files])


def ingested(root: Path, template: Path, capsys):
    """A store holding the three runs of ``write_results(root)`` (mIoU 40, 41, 42)."""
    store = Store(root, template)
    results, jsons = write_results(root)
    assert store.ingest(capsys, results, jsons)[0] == 0
    return store, results, jsons


def refused(rc: int, err: str, *words: str) -> None:
    """One line on stderr, exit 2, no traceback, and the line says ``words``."""
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def one_good_child_each(store: Store, miou: float) -> dict[str, object]:
    """Every run has exactly one complete, FINISHED child with ``miou`` (+ its index)."""
    points = store.points()
    assert len(points) == 3
    for i, (run_id, runs) in enumerate(sorted(points.items())):
        assert len(runs) == 1, (run_id, [r.info.run_id for r in runs])
        run = runs[0]
        assert run.info.status == "FINISHED" and run.data.tags[c.COMPLETE_TAG] == "true"
    mious = sorted(r[0].data.metrics["miou"] for r in points.values())
    assert mious == [miou, miou + 1, miou + 2]
    return {k: v[0].info.run_id for k, v in points.items()}


def test_wrong_results_or_ablation_is_refused_with_the_store_untouched(
        tmp_path, empty_db, capsys, monkeypatch):
    """The issue: `--results` left out or wrong, or a wrong `--ablation`, replaced every
    finished run by one without metrics and exited 0."""
    store = Store(tmp_path, empty_db)
    results, jsons = write_results(tmp_path / "real")
    monkeypatch.chdir(tmp_path)  # the default `--results results` is relative
    assert store.ingest(capsys, results, jsons)[0] == 0
    ids = one_good_child_each(store, 40.0)
    before = store.snapshot()
    (tmp_path / "elsewhere").mkdir()
    for results_arg, ablation, words in (
            (None, ABL, ("check --ablation and --results", "'results'")),
            (tmp_path / "elsewhere", ABL, ("not run", "elsewhere")),
            (results, "other", ("of ablation 'other'",))):
        rc, _, err = store.ingest(capsys, results_arg, jsons, ablation=ablation)
        refused(rc, err, *words, "(and 2 more runs); nothing was written")
        assert store.snapshot() == before
    assert store.client().get_experiment_by_name("other") is None
    assert one_good_child_each(store, 40.0) == ids


def test_missing_or_unreadable_inputs_are_refused(tmp_path, empty_db, capsys):
    store, results, jsons = ingested(tmp_path, empty_db, capsys)
    before = store.snapshot()
    run = json.loads(Path(jsons[1]).read_text())
    paths = RunPaths.of(str(results), ABL, run)
    metrics = paths.metrics.read_text()

    paths.metrics.unlink()  # evaluation not done (or its output deleted)
    rc, _, err = store.ingest(capsys, results, jsons)
    refused(rc, err, f"run {run['run_id']}", "metrics.json not found", "nothing was written")
    paths.metrics.mkdir()  # not a file
    refused(*store.ingest(capsys, results, jsons)[::2], "metrics.json not found")
    paths.metrics.rmdir()
    paths.metrics.write_text(metrics[:20])  # cut short
    refused(*store.ingest(capsys, results, jsons)[::2], "metrics.json: not JSON")
    paths.metrics.write_text(metrics)
    paths.flops.write_bytes(b"\xff\xfe{")  # an optional output that is there must read
    refused(*store.ingest(capsys, results, jsons)[::2], "flops.json: not JSON")
    paths.flops.unlink()
    rc, _, err = store.ingest(capsys, results, jsons + [str(tmp_path / "gone" / "run.json")])
    refused(rc, err, "run file not found", "gone")
    assert store.snapshot() == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_stores_are_refused_before_anything_is_written(tmp_path, empty_db, capsys):
    store = Store(tmp_path, empty_db)
    results, jsons = write_results(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    not_db = tmp_path / "notes.db"
    not_db.write_text("these are my notes, not a database\n")
    port = free_port()  # nothing listens there
    for uri, words in (
            ("foo://bar", ("tracking URI 'foo://bar'",)),
            (f"sqlite:///{a_file}/mlflow.db", ("cannot create folder", "a-file")),
            (f"sqlite:///{not_db}", ("is not an SQLite database",)),
            (f"http://127.0.0.1:{port}", (f"127.0.0.1:{port}", "does not answer")),
            (f"postgresql://u@127.0.0.1:{port}/db", ("does not answer",))):
        rc, _, err = store.ingest(capsys, results, jsons, uri=uri)
        refused(rc, err, *words)
    assert not_db.read_text() == "these are my notes, not a database\n"
    assert a_file.is_file() and not store.art.exists()

    # an artifact folder that cannot be made: nothing in the store either
    rc, _, err = store.ingest(capsys, results, jsons, art=a_file / "art")
    refused(rc, err, "artifact folder", "is not writable")
    assert store.client().get_experiment_by_name(ABL) is None

    # the artifact folder of an existing experiment stops being writable: no record is lost
    assert store.ingest(capsys, results, jsons)[0] == 0
    ids = one_good_child_each(store, 40.0)
    results, jsons = write_results(tmp_path / "new", miou=55.0)
    moved = tmp_path / "art-moved"
    (store.art / ABL).rename(moved)
    (store.art / ABL).write_text("")  # the folder is now a file
    before = store.snapshot()
    rc, _, err = store.ingest(capsys, results, jsons)
    refused(rc, err, f"artifact folder of experiment '{ABL}'", "not writable")
    assert store.snapshot() == before
    (store.art / ABL).unlink()
    moved.rename(store.art / ABL)
    assert one_good_child_each(store, 40.0) == ids


def test_failure_part_way_keeps_every_finished_run_and_a_reingest_repairs(
        tmp_path, empty_db, capsys, monkeypatch):
    """The issue: a failure part-way (artifact folder read-only) deleted the old child, left the
    new one RUNNING, and every later re-ingest called it unchanged."""
    from pipelines.tracking import children
    from pipelines.tracking import store as tracking
    from tests.ingest_faults import stopped_at

    store, results, jsons = ingested(tmp_path, empty_db, capsys)
    old = one_good_child_each(store, 40.0)
    results, jsons = write_results(tmp_path / "new", miou=55.0)
    with stopped_at("artifacts@2:raise"):  # the 2nd run's upload fails
        rc, _, err = store.ingest(capsys, results, jsons)
    refused(rc, err, "injected fault at artifacts", "keeps the records it held")
    points = store.points()
    for i, run_json in enumerate(jsons):  # the 1st run is replaced, the others are not
        run_id = json.loads(Path(run_json).read_text())["run_id"]
        (run,) = points[run_id]
        assert children.is_complete(run) and run.data.metrics["miou"] == (55.0 if i == 0 else
                                                                          40.0) + i
        assert (run.info.run_id == old[run_id]) == (i > 0)
    exp = store.client().get_experiment_by_name(ABL)
    assert not tracking.search_all(store.client(), exp.experiment_id,
                                   f"tags.`{c.ROLE_TAG}` = '{c.ROLE_PENDING}'")
    rc, out, _ = store.ingest(capsys, results, jsons)
    assert rc == 0 and "2 replaced, 1 unchanged" in out
    one_good_child_each(store, 55.0)


def test_an_incomplete_child_is_never_unchanged(tmp_path, empty_db, capsys):
    """A child an older ingest left RUNNING (its fingerprint set at creation) is rewritten."""
    from pipelines.tracking.ingest import run_fingerprint

    store, results, jsons = ingested(tmp_path, empty_db, capsys)
    client = store.client()
    run = json.loads(Path(jsons[0]).read_text())
    (child,) = store.points()[run["run_id"]]
    client.delete_run(child.info.run_id)
    tags = {k: v for k, v in child.data.tags.items()
            if k != c.COMPLETE_TAG and not k.startswith("mlflow.")}
    assert tags[c.INGEST_HASH_TAG] == run_fingerprint(str(results), ABL, run)
    broken = client.create_run(child.info.experiment_id, run_name=run["run_id"], tags=tags)
    rc, out, _ = store.ingest(capsys, results, jsons)
    assert rc == 0 and "1 replaced, 2 unchanged" in out
    one_good_child_each(store, 40.0)
    assert client.get_run(broken.info.run_id).info.lifecycle_stage == "deleted"


def test_a_good_run_is_kept_over_a_worse_record_of_its_recipe(tmp_path, empty_db, capsys):
    """The issue: with a checkpoint deleted, a re-evaluation recorded "checkpoint not found" and
    ingest replaced the good run (mIoU 16.64) by that failure."""
    store, results, jsons = ingested(tmp_path, empty_db, capsys)
    ids = one_good_child_each(store, 40.0)
    runs = [json.loads(Path(j).read_text()) for j in jsons]
    first, second = (RunPaths.of(str(results), ABL, r) for r in runs[:2])
    first.metrics.write_text(json.dumps({"status": "failed", "stage": "evaluate",
                                         "reason": "checkpoint not found: epoch_4.pth"}))
    second.flops.unlink()  # an optional stage's output gone: its GFLOPs would be lost
    rc, out, _ = store.ingest(capsys, results, jsons)
    assert rc == 0 and "2 kept, 1 unchanged" in out
    kept = [line for line in out.splitlines() if line.startswith("KEPT")]
    assert len(kept) == 2 and "checkpoint not found" in kept[0] and ids[runs[0]["run_id"]] \
        in kept[0]
    assert "lack gflops_backbone" in kept[1]
    assert one_good_child_each(store, 40.0) == ids

    # a failed child is replaced by good results (and a good one by other good results)
    store2 = Store(tmp_path / "two", empty_db)
    assert store2.ingest(capsys, results, jsons)[0] == 0
    assert store2.points()[runs[0]["run_id"]][0].info.status == "FAILED"
    results, jsons = write_results(tmp_path / "fixed", miou=55.0)
    rc, out, _ = store2.ingest(capsys, results, jsons)
    assert rc == 0 and "3 replaced" in out
    one_good_child_each(store2, 55.0)


@pytest.mark.parametrize("bad", [{}, {"miou": "high"}, {"miou": None}, {"miou": True}],
                         ids=["missing", "text", "null", "bool"])
def test_a_metrics_json_without_a_number_miou_is_refused(tmp_path, empty_db, capsys, bad):
    """The audit: such a run was ingested as FINISHED with no mIoU (reported as `-`); now it is
    refused in one line, in a new store and over a good record alike (that record kept)."""
    results, jsons = write_results(tmp_path / "runs")
    run = json.loads(Path(jsons[1]).read_text())
    metrics = RunPaths.of(str(results), ABL, run).metrics
    good = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**{k: v for k, v in good.items() if k != "miou"}, **bad}))
    fresh = Store(tmp_path / "fresh", empty_db)
    before = fresh.snapshot()
    rc, _, err = fresh.ingest(capsys, results, jsons)
    refused(rc, err, str(metrics), "mIoU", "nothing was written")
    assert fresh.snapshot() == before

    store = Store(tmp_path / "store", empty_db)
    metrics.write_text(json.dumps(good))
    assert store.ingest(capsys, results, jsons)[0] == 0
    ids = one_good_child_each(store, 40.0)
    metrics.write_text(json.dumps({**{k: v for k, v in good.items() if k != "miou"}, **bad}))
    refused(*store.ingest(capsys, results, jsons)[::2], "mIoU")
    assert one_good_child_each(store, 40.0) == ids


def test_a_refused_ingest_into_a_new_store_leaves_nothing(tmp_path, capsys):
    """The audit: an ingest refused after MLflow had created a new SQLite store (here: its
    artifact folder cannot be made) left that empty store, and its folder, behind."""
    results, jsons = write_results(tmp_path / "runs")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    db = tmp_path / "new" / "store" / "mlflow.db"
    capsys.readouterr()
    rc = main(["ingest", "--ablation", ABL, "--tracking-uri", f"sqlite:///{db}",
               "--artifact-location", str(a_file / "art"), "--results", str(results),
               "--runs", *jsons])
    refused(rc, capsys.readouterr().err, "artifact folder", "not writable")
    assert not (tmp_path / "new").exists()

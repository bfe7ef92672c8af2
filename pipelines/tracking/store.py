"""The MLflow tracking store: a URI checked before any job, opened, and searched.

A tracking URI is checked at ``snakemake -n`` (:func:`check_readable`: a scheme MLflow writes, a
file that is a database, a server that answers) and before ingest writes anything
(:func:`check_store`); a new SQLite store that an ingest refused is removed again
(:func:`removed_if_new_and_failed`). The experiment of an ablation opens on its runs table (its
kind is set to model training, not MLflow 3's GenAI default), and holds one parent run per
ablation (:func:`get_or_create_parent`) whose children are found with one paged query
(:func:`children_by_run_id`). How children are written: :mod:`pipelines.tracking.children`.

mmengine's ``MLflowVisBackend`` is not used: it breaks with MLflow >= 3.13 defaults.
"""
from __future__ import annotations

import contextlib
import logging
import math
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipelines import contract as c
from pipelines.errors import UserError
from pipelines.store_uri import check_readable, check_scheme

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
BATCH = 1000  # MLflow's log_batch limit on metrics per call
PARAM_BATCH = 100
#: the port a store's server answers on when its URI names none
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///FILE`` absolute and create its folder."""
    check_scheme(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_absolute():
            path = Path.cwd() / path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"tracking URI {uri!r}: cannot create folder {path.parent} "
                            f"({err.strerror or err})") from None
        return f"sqlite:///{path}"
    return uri


def resolve_artifact_location(location: str | None) -> str | None:
    """A folder -> ``file://`` URI (absolute); a URI stays; empty -> the server's default."""
    if not location:
        return None
    if "://" in location:
        return location
    path = Path(location)
    if not path.is_absolute():
        path = Path.cwd() / path
    check_writable(path, "artifact folder")
    return path.as_uri()


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and write a file there (and remove it), or a UserError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"{what} {folder} is not writable ({err.strerror or err})") from None


def missing_sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///FILE`` store when it does not exist or is empty (a reader must
    refuse it: opening it with MLflow would write an empty store there), else None."""
    if not (uri or "").startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    return None if path.is_file() and path.stat().st_size > 0 else path


@contextlib.contextmanager
def removed_if_new_and_failed(uri: str):
    """A ``sqlite:///FILE`` store (and the folders above it) that this block creates is removed
    again when the block fails: a refused ingest into a new store leaves nothing behind. A store
    that existed before is never touched here."""
    path, missing = None, []
    if (uri or "").startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):].split("?", 1)[0]).absolute()
        folder = path.parent
        while not folder.exists():  # the folders this block may create, deepest first
            missing.append(folder)
            folder = folder.parent
        if path.exists():
            path = None
    try:
        yield
    except BaseException:
        if path is not None:
            for leftover in (path, *(path.with_name(path.name + end)
                                     for end in ("-journal", "-wal", "-shm"))):
                with contextlib.suppress(OSError):  # never made (its folder is a file...)
                    leftover.unlink()
            for folder in missing:
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    break
        raise


def check_store(uri: str) -> None:
    """Refuse, before anything is written, a store ingest cannot write: an SQLite file that is
    not a database or not writable, or a server (MLflow, PostgreSQL) that does not answer."""
    if uri.startswith("sqlite:///"):
        check_readable(uri)
        path = Path(uri[len("sqlite:///"):])
        if path.exists():
            try:
                open(path, "r+b").close()
            except OSError as err:
                raise UserError(f"tracking URI {uri!r}: {path} cannot be written "
                                f"({err.strerror or err})") from None
        check_writable(path.parent, "folder of the tracking store")
        return
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except (OSError, ValueError) as err:
        raise UserError(f"tracking server {parts.hostname}:{parts.port or DEFAULT_PORTS[scheme]} "
                        f"of {uri!r} does not answer ({getattr(err, 'strerror', None) or err})"
                        ) from None


def open_client(tracking_uri: str = DEFAULT_TRACKING_URI):
    from mlflow.tracking import MlflowClient

    # alembic announces every migration of a fresh store on INFO, MLflow the store's creation
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def open_writer(tracking_uri: str = DEFAULT_TRACKING_URI):
    """:func:`open_client` for ingest: the store checked first (:func:`check_store`)."""
    uri = resolve_tracking_uri(tracking_uri)
    check_store(uri)
    with store_errors(uri):
        return open_client(uri)


def _one_line(err: BaseException) -> str:
    text = str(getattr(err, "message", "") or err or type(err).__name__).strip()
    return (text.splitlines() or [type(err).__name__])[0][:300]


@contextlib.contextmanager
def store_errors(uri: str, note: str = "", what: str = "MLflow store"):
    """An error of the store (MLflow, SQL, HTTP, file system) -> one-line :class:`UserError`
    (``<what> <uri>: <the error's first line><note>``)."""
    from mlflow.exceptions import MlflowException

    kinds: list[type] = [MlflowException, OSError]
    with contextlib.suppress(ImportError):
        from sqlalchemy.exc import SQLAlchemyError

        kinds.append(SQLAlchemyError)
    try:
        yield
    except tuple(kinds) as err:
        raise UserError(f"{what} {uri}: {_one_line(err)}{note}") from None


def get_or_create_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """The experiment of an ablation, created once, its kind set to model training."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        folder = _local_folder(exp.artifact_location or "")
        if folder is not None:
            check_writable(folder, f"artifact folder of experiment {name!r}")
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        experiment_id = exp.experiment_id
        if exp.tags.get(c.EXPERIMENT_KIND_TAG) != c.EXPERIMENT_KIND:
            client.set_experiment_tag(experiment_id, c.EXPERIMENT_KIND_TAG, c.EXPERIMENT_KIND)
        return experiment_id
    if artifact_location and "://" not in artifact_location:
        artifact_location = str(Path(artifact_location) / name)  # one folder per ablation
    return client.create_experiment(
        name, artifact_location=resolve_artifact_location(artifact_location),
        tags={c.EXPERIMENT_KIND_TAG: c.EXPERIMENT_KIND})


def _local_folder(location: str) -> Path | None:
    """The folder of a local artifact location (a ``file://`` URI or a path), else None."""
    if location.startswith("file:"):
        return Path(unquote(urlsplit(location).path))
    return Path(location) if location and "://" not in location else None


def search_all(client, experiment_id: str, filter_string: str = "") -> list:
    """Every run of an experiment matching ``filter_string``, page by page."""
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  max_results=5000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def get_or_create_parent(client, experiment_id: str, ablation: str,
                         description: str = "") -> str:
    """The ablation's parent run (created once; found again by its role tag)."""
    found = search_all(client, experiment_id, f"tags.`{c.ROLE_TAG}` = '{c.ROLE_PARENT}'")
    if found:
        parent = found[0].info.run_id
        if found[0].info.status == "RUNNING":  # an ingest killed right after creating it
            client.set_terminated(parent)
    else:
        run = client.create_run(experiment_id, run_name=ablation,
                                tags={c.ROLE_TAG: c.ROLE_PARENT, c.ABLATION_TAG: ablation})
        parent = run.info.run_id
        client.set_terminated(parent)
    if description:
        client.set_tag(parent, c.NOTE_TAG, description)
    return parent


def children_by_run_id(client, experiment_id: str, roles=c.POINT_ROLES) -> dict[str, list]:
    """Current children of an experiment by their ``pipelines.run_id`` (one paged query)."""
    out: dict[str, list] = {}
    for run in search_all(client, experiment_id):
        tags = run.data.tags
        if tags.get(c.ROLE_TAG) in roles and tags.get(c.RUN_ID_TAG):
            out.setdefault(tags[c.RUN_ID_TAG], []).append(run)
    return out


def finite(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


#: the steps of writing a child, logged at DEBUG with the grid run's id (``created``,
#: ``logged``, ``artifacts``, ``terminated``; then ``completed`` once its complete marker is
#: set and ``retired`` once the child it replaces is gone); the tests stop an ingest at each
#: of them by a handler on this logger
STEPS = logging.getLogger(__name__ + ".steps")

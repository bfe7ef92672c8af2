"""A content-keyed cache of an ablation's expanded grid, for the many short Snakemake starts.

On a cluster every job runs its own ``snakemake``, which parses the Snakefile again and expands
the whole grid again (for 10,000 runs, seconds per job: mmengine reads each variant's config
and its bases, every run's recipe is hashed). The runs depend only on what the expansion reads,
so the first expansion (the head's) saves them and every later start loads them, when nothing
it read has changed.

What keys an entry (:func:`cached_expand`):

* the ablation config as validated (defaults filled in), the repository and working folders,
  the ``PIPELINES_*`` environment (the pretrained-weights folder);
* the code: the content of every file of the ``pipelines`` package, the Python version and the
  installed distributions with their versions (site-packages' ``*.dist-info`` names);
* every other file the expansion opened (model configs, their ``_base_`` files, the dataset's
  files it looked at), by content, and every folder it listed, by its names, recorded while
  the expansion ran (:func:`sys.addaudithook`, events ``open``, ``os.listdir``,
  ``os.scandir``), less the files and folders it wrote itself (``open`` for writing,
  ``os.mkdir``: mmengine's temporary copies); the dataset folder and the weights folder are
  listed as well (a file that appears or goes there changes the key even when the expansion
  only asked whether it exists).

An entry is used only when all of it is unchanged; anything else is a new expansion (and a new
entry). A failed expansion (a config error) is never saved: the next start reports it again.
Entries are written atomically; the newest :data:`KEEP` are kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

#: entries kept per cache folder (the newest by modification time)
KEEP = 8
#: pickle format of an entry: bump when its layout changes
FORMAT = 1
PACKAGE = Path(__file__).resolve().parents[1]

_recording = threading.local()
_hook_installed = False


def _audit(event: str, args: tuple) -> None:
    reads = getattr(_recording, "reads", None)
    if reads is None:
        return
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None))[:3]
        if isinstance(path, int):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
        (reads["written"] if writing else reads["files"]).add(os.fsdecode(path))
    elif event == "os.mkdir" and args and not isinstance(args[0], int):
        reads["made"].add(os.fsdecode(args[0]))
    elif event in ("os.listdir", "os.scandir"):
        path = args[0] if args else "."
        if path is None:
            path = "."
        if not isinstance(path, int):
            reads["dirs"].add(os.fsdecode(path))


def _record():
    """Start recording this thread's file reads; returns the sets being filled."""
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True
    _recording.reads = {"files": set(), "dirs": set(), "written": set(), "made": set()}
    return _recording.reads


def _stop() -> None:
    _recording.reads = None


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def _listing_digest(path: str) -> str | None:
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return None
    return hashlib.sha256("\0".join(names).encode()).hexdigest()


def _environment_roots() -> list[str]:
    """Folders whose files are identified by the installed distributions and the Python
    version (the key's environment part): the interpreter's and the environment's libraries."""
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= {sys.prefix, sys.base_prefix, sys.exec_prefix}
    return sorted(os.path.realpath(r) for r in roots if r)


def _code_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _distributions() -> list[str]:
    names: set[str] = set()
    for key in ("purelib", "platlib"):
        try:
            names |= {n for n in os.listdir(sysconfig.get_paths()[key])
                      if n.endswith((".dist-info", ".egg-info"))}
        except OSError:
            pass
    return sorted(names)


def _folders_of(config: Mapping) -> list[str]:
    """The dataset folder and the pretrained-weights folder of an ablation (listed into the
    key: see the module docstring)."""
    out = []
    data = config.get("data") or {}
    if data.get("root") and not data.get("synthetic"):
        out.append(str(data["root"]))
    weights = config.get("weights") or os.environ.get("PIPELINES_WEIGHTS")
    if weights:
        out.append(str(weights))
    return out


def static_key(config: Mapping, repo: str | os.PathLike, code_files: Iterable = ()) -> str:
    """The part of the key known before expanding: config, folders, environment, code (the
    ``pipelines`` package and ``code_files``)."""
    parts = {
        "code_files": [(str(f), _file_digest(str(f))) for f in sorted(map(str, code_files))],
        "format": FORMAT,
        "config": json.dumps(config, sort_keys=True, default=repr),
        "repo": os.path.realpath(repo),
        "cwd": os.getcwd(),
        "env": sorted((k, v) for k, v in os.environ.items() if k.startswith("PIPELINES_")),
        "python": sys.version,
        "executable": sys.executable,
        "distributions": _distributions(),
        "code": _code_digest(),
        "folders": [(f, _listing_digest(f)) for f in _folders_of(config)],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _reads_to_check(reads: Mapping[str, Iterable[str]]) -> dict[str, list]:
    """The recorded reads outside the code and the environment, each with its digest now."""
    # the code and the environment are in the key already; the files and folders the
    # expansion wrote itself are its own (mmengine copies each config into a temporary
    # folder before reading it), not input: a user's file under /tmp is input like any other
    made = tuple(os.path.realpath(d) + os.sep for d in reads.get("made", ()))
    written = {os.path.realpath(f) for f in reads.get("written", ())}
    skip = tuple(r + os.sep for r in _environment_roots()) + (str(PACKAGE) + os.sep,) + made
    # the import system lists the folders of sys.path: those are code, not input
    imports = {os.path.realpath(p or ".") for p in sys.path} | {str(PACKAGE)}
    files = {os.path.abspath(f): os.path.realpath(f) for f in reads["files"]}
    dirs = sorted({os.path.abspath(d) for d in reads["dirs"]} - imports)
    return {
        "files": [(f, _file_digest(f)) for f, real in sorted(files.items())
                  if not real.startswith(skip) and real not in written and not os.path.isdir(f)],
        "dirs": [(d, _listing_digest(d)) for d in dirs
                 if not os.path.realpath(d).startswith(skip)],
    }


def _still_valid(checks: Mapping[str, list]) -> bool:
    return (all(_file_digest(f) == digest for f, digest in checks["files"])
            and all(_listing_digest(d) == digest for d, digest in checks["dirs"]))


def load(folder: Path, key: str):
    """The runs saved under ``key`` in ``folder`` when everything they were read from is
    unchanged, else None."""
    path = Path(folder) / f"{key}.pkl"
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError,
            IndexError, TypeError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
        return None
    if not _still_valid(entry["checks"]):
        return None
    return entry["runs"]


def save(folder: Path, key: str, runs: Any, checks: Mapping[str, list]) -> None:
    """Write one entry atomically and keep the newest :data:`KEEP` of the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump({"format": FORMAT, "key": key, "checks": checks, "runs": runs}, fh,
                    protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, folder / f"{key}.pkl")
    entries = sorted(folder.glob("*.pkl"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        old.unlink(missing_ok=True)


def cached_expand(config: Mapping, repo: str | os.PathLike, folder: str | os.PathLike,
                  expand: Callable[..., Any] | None = None,
                  derive: Callable[[Any], Any] | None = None,
                  code_files: Iterable = ()) -> tuple[Any, bool]:
    """``expand(config, repo=repo)`` (default :func:`pipelines.grid.expand_grid`), or its saved
    result when nothing it reads has changed; returns ``(runs, hit)``, or with ``derive``
    ``((runs, derive(runs)), hit)``: what the caller computes from the runs alone (with the
    config and the code, both in the key) is saved with them; ``code_files`` (the files that
    define ``derive``, say) join the key with their content.

    ``folder`` holds the entries (any writable folder shared by the jobs of a workflow). A
    folder that cannot be written only costs the saving, never the result.
    """
    if expand is None:
        from pipelines.grid import expand_grid as expand
    key = static_key(config, repo, code_files)
    runs = load(Path(folder), key + ("-derived" if derive else ""))
    if runs is not None:
        return runs, True
    reads = _record()
    try:
        runs = expand(config, repo=repo)
    finally:
        _stop()
    if derive is not None:
        runs = (runs, derive(runs))
    try:
        save(Path(folder), key + ("-derived" if derive else ""), runs, _reads_to_check(reads))
    except OSError as err:
        print(f"warning: the expanded grid was not saved in {folder} ({err}); every start "
              "expands it again", file=sys.stderr)
    return runs, False

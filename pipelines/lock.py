"""One writer per results folder, and children that die with their head (issue 17).

Two ``snakemake`` heads on one results folder (say with different ``--directory``, so Snakemake's
own lock in ``.snakemake/`` does not see the other) would train the same runs into the same
folders. So every writer holds an advisory lock on ``<results>/.pipelines.lock``:

* a Snakemake head takes it **exclusively** in the Snakefile's ``onstart`` hook (a dry run, and
  the job processes Snakemake starts on a cluster node, take nothing);
* a search head (``python -m pipelines search``) takes it **shared**: the workers of one study
  share their results folder by design (they coordinate through the study), but a plain
  ``snakemake`` on that folder is refused while any of them runs. The Snakemake of each search
  generation inherits the head's lock (an open descriptor named by :data:`INHERITED`) instead of
  taking its own, and gets ``SIGTERM`` when its head dies (``PR_SET_PDEATHSIG``), so a
  ``kill -9`` of the head stops its trainings too rather than leaving them to race the restarted
  search.

``flock`` locks belong to the open file: a head that dies, however it dies, releases its lock with
no stale file to clean up. A refusal is one line (:class:`~pipelines.errors.UserError`).
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import time
from pathlib import Path

from pipelines.errors import UserError

LOCK_NAME = ".pipelines.lock"
#: environment variable naming the descriptor of a lock a child inherits from its head
INHERITED = "PIPELINES_RESULTS_LOCK_FD"

_held: dict[str, int] = {}  # results folder -> descriptor, held for the life of the process


def lock_path(results: str | Path) -> Path:
    return Path(results) / LOCK_NAME


def _inherited(path: Path) -> int | None:
    """The descriptor a head passed down, when it is open on this very lock file."""
    fd = os.environ.get(INHERITED)
    if not fd or not fd.isdigit():
        return None
    try:
        mine, want = os.fstat(int(fd)), os.stat(path)
    except OSError:
        return None
    return int(fd) if (mine.st_dev, mine.st_ino) == (want.st_dev, want.st_ino) else None


def hold(results: str | Path, *, shared: bool = False, what: str = "snakemake") -> int:
    """Take the results folder's lock for the rest of this process, or refuse in one line.

    Returns the descriptor (pass it to children with :func:`child_env` and ``pass_fds``).
    """
    path = lock_path(results)
    key = str(path.resolve())
    if key in _held:
        return _held[key]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"results folder {results}: cannot create its lock ({err.strerror})") \
            from None
    inherited = _inherited(path)
    if inherited is not None:  # our head holds it for us
        os.close(fd)
        _held[key] = inherited
        return inherited
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = path.with_name(LOCK_NAME + ".holder")
        who = holder.read_text().strip() if holder.is_file() else "another pipelines process"
        os.close(fd)
        raise UserError(f"results folder {results} is in use by {who}: wait for it to finish, "
                        f"or give this run another results folder") from None
    if not shared:  # who holds it, for the next one's refusal (shared holders are many)
        path.with_name(LOCK_NAME + ".holder").write_text(
            f"{what} (pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    _held[key] = fd
    return fd


def child_env(fd: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the held lock passed down to a child."""
    return dict(os.environ if env is None else env, **{INHERITED: str(fd)})


def die_with_parent() -> None:
    """``preexec_fn`` for a child that must not outlive its head: SIGTERM when the head dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed head
        pass

"""One writer per results folder, and children that die with their head.

Two ``snakemake`` heads on one results folder (say with different ``--directory``, so Snakemake's
own lock in ``.snakemake/`` does not see the other) would train the same runs into the same
folders. So every writer holds an advisory lock on ``<results>/.pipelines.lock``:

* a Snakemake head takes it **exclusively** in the Snakefile's ``onstart`` hook (a dry run, and
  the job processes Snakemake starts on a cluster node, take nothing);
* a search head (``python -m pipelines search``) takes it **shared**: the workers of one study
  share their results folder by design (they coordinate through the study), but a plain
  ``snakemake`` on that folder is refused while any of them runs. The Snakemake of each search
  generation inherits the head's lock (an open descriptor named by :data:`INHERITED`) instead of
  taking its own.

A search generation's Snakemake dies with its head, and its jobs with it: it runs in a process
group of its own (:func:`start_in_group`) led by a small guard (``python -m pipelines.lock``)
that gets ``SIGTERM`` when the head dies (``PR_SET_PDEATHSIG``) and then kills the whole group,
Snakemake and every job it started. (``SIGTERM`` to Snakemake itself would not do: it logs "Will
exit after finishing currently running jobs" and lets the trainings run their whole length,
racing the restarted search for the same folders.) A head killed before its guard could watch
it is seen by the guard (its parent is no longer the head). A guard killed alone is seen by its
head, which stops the group; a guard killed together with its head leaves the group behind, and
the restarted search stops it first (:func:`stop_group`,
:meth:`pipelines.search.executors.SnakemakeExecutor.hold_results`).

``flock`` locks belong to the open file: a head that dies, however it dies, releases its lock with
no stale file to clean up. A refusal is one line (:class:`~pipelines.errors.UserError`).
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
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


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel for ``sig`` when this process's parent dies (Linux ``PR_SET_PDEATHSIG``;
    elsewhere nothing). Also a ``preexec_fn``."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed head
        pass


def start_in_group(cmd: list[str], **popen) -> subprocess.Popen:
    """Start ``cmd`` under a guard in a process group of its own; the group (``cmd`` and all it
    starts) is killed when this process dies, however it dies. The guard's pid is the group's
    id: stop it with :func:`stop_group`. ``popen``: as for ``subprocess.Popen`` (``pass_fds``,
    ``env``, ``cwd``, ``stdout``...); the guard passes its descriptors on to ``cmd``."""
    guard = [sys.executable, "-m", "pipelines.lock", str(os.getpid()),
             ",".join(str(fd) for fd in popen.get("pass_fds", ())), *cmd]
    return subprocess.Popen(guard, start_new_session=True, preexec_fn=die_with_parent, **popen)


def group_alive(group: int) -> bool:
    """Whether any process of process group ``group`` is left (zombies count until reaped)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(group: int, wait_s: float = 60.0, proc: subprocess.Popen | None = None) -> bool:
    """``SIGKILL`` every process of ``group`` and wait until none is left (``proc``: its leader,
    when it is this process's child, is reaped). Returns whether the group is gone."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        return False
    deadline = time.monotonic() + wait_s
    while True:
        if proc is not None:
            proc.poll()
        if not group_alive(group):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _guard(head: int, fds: str, cmd: list[str]) -> int:
    """The leader of a :func:`start_in_group` group: runs ``cmd`` and kills the whole group when
    the head dies (its parent-death signal, ``SIGTERM``)."""
    def kill_group(*_):
        os.killpg(0, signal.SIGKILL)  # this guard included

    signal.signal(signal.SIGTERM, kill_group)
    die_with_parent(signal.SIGTERM)
    if os.getppid() != head:  # the head died before this guard could watch it
        kill_group()
    child = subprocess.Popen(cmd, pass_fds=tuple(int(fd) for fd in fds.split(",") if fd))
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(_guard(int(sys.argv[1]), sys.argv[2], sys.argv[3:]))

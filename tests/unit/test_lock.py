"""One writer per results folder (pipelines/lock.py): a second Snakemake head is refused in one
line before any job, a search's children work under its lock, and a child dies with its head."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from pipelines.errors import UserError
from pipelines.lock import INHERITED, child_env, hold, lock_path
from tests.workflow.conftest import snakemake, tiny_ablation, write_config


def _holder(results, shared: bool) -> subprocess.Popen:
    """Another process holding the folder's lock until killed."""
    code = (f"import sys, time; from pipelines.lock import hold; "
            f"hold({str(results)!r}, shared={shared}, what='test holder'); "
            f"print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("shared", [False, True], ids=["snakemake-head", "search-head"])
def test_a_second_writer_is_refused_in_one_line_before_any_job(tmp_path, shared):
    config = tiny_ablation(tmp_path)
    configfile = write_config(tmp_path / "tiny.yaml", config)
    results = tmp_path / "results"
    other = _holder(results, shared)
    try:
        # another working directory (its own .snakemake lock), the same results folder
        (tmp_path / "elsewhere").mkdir()
        proc = snakemake(tmp_path / "elsewhere", configfile)
    finally:
        other.kill()
        other.wait()
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is in use by" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (results / "train").exists() and not (results / "runs").exists()
    assert not (tmp_path / "data").exists()  # no job ran, the dataset job included


def test_locks_in_one_process_and_inherited_by_a_child(tmp_path):
    fd = hold(tmp_path, shared=True)
    assert hold(tmp_path, shared=True) == fd  # taken once per process
    # a child given the descriptor works under it; one without it is refused
    code = ("from pipelines.lock import hold; import sys; "
            f"hold({str(tmp_path)!r}); print('ok')")
    ok = subprocess.run([sys.executable, "-c", code], env=child_env(fd), pass_fds=(fd,),
                        capture_output=True, text=True)
    assert ok.stdout.strip() == "ok", ok.stderr
    env = {k: v for k, v in os.environ.items() if k != INHERITED}
    exclusive = code.replace("hold(", "hold(shared=False, results=")
    refused = subprocess.run([sys.executable, "-c", exclusive], env=env, capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "is in use by" in refused.stderr
    assert lock_path(tmp_path).is_file()


def test_an_unwritable_results_folder_is_one_line(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/pipelines-results"  # root writes anywhere else
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = str(tmp_path / "ro" / "results")
    with pytest.raises(UserError, match="cannot create its lock"):
        hold(target)


def test_a_child_dies_with_its_head(tmp_path):
    """What the search gives each generation's Snakemake: SIGTERM when the head is killed."""
    pid_file = tmp_path / "child.pid"
    head_code = ("import subprocess, sys, time; from pipelines.lock import die_with_parent; "
                 "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
                 "preexec_fn=die_with_parent); "
                 f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(600)")
    head = subprocess.Popen([sys.executable, "-c", head_code])
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.kill(head.pid, signal.SIGKILL)
    head.wait()
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    from tests.conftest import process_alive

    return process_alive(pid)


# A search head as `python -m pipelines search` runs each generation: SnakemakeExecutor.snakemake
# under the head's shared lock, here on a one-rule Snakefile whose job sleeps (a long training).
SLEEPY_SNAKEFILE = ('rule all:\n    output: "done.txt"\n'
                    '    shell: "echo $$ > job.pid; exec sleep 600"\n')
HEAD = """
import sys
from pathlib import Path
from types import SimpleNamespace
from pipelines.search.executors import SnakemakeExecutor
root = Path(sys.argv[1])
spec = SimpleNamespace(ablation={"results": str(root / "results")}, name="s")
executor = SnakemakeExecutor(spec=spec, workdir=root, cores=1, snakefile=root / "Snakefile")
executor.hold_results()
executor.snakemake(root / "c.yaml", ["done.txt"], root / "generation.log")
"""


def _search_head(root):
    """A head whose generation's job is running: (head, the job's pid)."""
    from tests.conftest import REPO

    (root / "Snakefile").write_text(SLEEPY_SNAKEFILE)
    (root / "c.yaml").write_text("a: 1\n")
    head = subprocess.Popen([sys.executable, "-c", HEAD, str(root)], cwd=REPO,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not ((root / "job.pid").is_file() and (root / "job.pid").read_text().strip()):
        assert head.poll() is None and time.monotonic() < deadline, \
            (root / "generation.log").read_text()[-2000:]
        time.sleep(0.2)
    return head, int((root / "job.pid").read_text())


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def test_a_search_generations_jobs_die_with_their_head(tmp_path):
    """The audit: after `kill -9` of the head, its generation's Snakemake logged "Will exit after
    finishing currently running jobs" and the training ran its whole length."""
    head, job = _search_head(tmp_path)
    group = os.getpgid(job)
    try:
        os.kill(head.pid, signal.SIGKILL)
        head.wait()
        assert _gone_within(job, 30), "the job outlived its head"
        from pipelines.lock import group_alive

        deadline = time.monotonic() + 30
        while group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not group_alive(group), "Snakemake outlived its head"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def test_a_restarted_head_stops_the_jobs_a_dead_head_left(tmp_path):
    """A head and its generation's guard killed at once (nobody left to stop the jobs): the
    next head of the search stops them before it trains anything."""
    from pipelines.search.executors import SnakemakeExecutor

    head, job = _search_head(tmp_path)
    group = os.getpgid(job)
    try:
        os.kill(head.pid, signal.SIGSTOP)  # so that it cannot see its guard die
        os.kill(group, signal.SIGKILL)  # the guard (the group's leader) alone
        os.kill(head.pid, signal.SIGKILL)
        head.wait()
        time.sleep(1)
        assert _alive(job)  # a surviving writer
        spec = SimpleNamespace(ablation={"results": str(tmp_path / "results")}, name="s")
        said = []
        SnakemakeExecutor(spec=spec, workdir=tmp_path).hold_results(log=said.append)
        assert not _alive(job)
        assert len(said) == 1 and f"process group {group}" in said[0], said
        assert not list((tmp_path / "results" / "search" / "s" / "running").iterdir())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

"""A real single-node SLURM on this machine: munged + slurmctld + slurmd on loopback ports.

Everything lives in one temporary folder (``slurm.conf``, ``gres.conf``, state, logs); clients
find it through ``SLURM_CONF``. The node advertises one GPU through ``gres.conf`` (``Count=1``,
no device file), so jobs that ask for ``--gres=gpu:1`` schedule. No accounting daemon: job status
comes from ``squeue`` (``MinJobAge`` keeps finished jobs visible long enough).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


def missing_reason() -> str | None:
    """Why a local SLURM cannot start here (None when it can)."""
    absent = [b for b in BINARIES if not shutil.which(b) and not Path(f"/usr/sbin/{b}").exists()]
    if absent:
        return (f"SLURM/munge not installed ({', '.join(absent)} missing): run "
                f"workflow/scripts/install_services.sh")
    if os.geteuid() != 0:
        return "starting slurmd/munged needs root (slurmd runs jobs as their user)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def ensure_munge(log_dir: Path) -> subprocess.Popen | None:
    """Start munged unless one already answers; returns the process we started."""
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create"], check=True, capture_output=True)
    for folder in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    proc = subprocess.Popen(["runuser", "-u", "munge", "--", _sbin("munged"), "--foreground"],
                            stdout=open(log_dir / "munged.out", "w"), stderr=subprocess.STDOUT)
    for _ in range(50):
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return proc
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"munged did not start: {(log_dir / 'munged.out').read_text()[-500:]}")


class LocalSlurm:
    """Start with :meth:`start`, stop with :meth:`stop`; :attr:`env` for clients."""

    def __init__(self, root: Path, cpus: int = 2, mem_mb: int = 16000, gpus: int = 1):
        self.root = Path(root)
        self.cpus, self.mem_mb, self.gpus = cpus, mem_mb, gpus
        self.node = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []
        self.conf = self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        self.ctl_port = ctl_port = free_port()
        d_port = free_port()
        self.conf.write_text(f"""\
ClusterName=pipelines-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctl_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldParameters=enable_configless
JobCompType=jobcomp/none
GresTypes=gpu
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=main Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        # a fake GPU: slurmd counts one per device file, and /dev/null exists everywhere
        (r / "gres.conf").write_text(f"AutoDetect=off\nNodeName={self.node} Name=gpu "
                                     f"File=/dev/null Count={self.gpus}\n")

    def start(self, timeout: float = 60) -> "LocalSlurm":
        self.write_config()
        log = self.root / "log"
        munged = ensure_munge(log)
        if munged is not None:
            self.procs.append(munged)
        self.procs.append(subprocess.Popen([_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)],
                                           stdout=open(log / "slurmctld.out", "w"),
                                           stderr=subprocess.STDOUT, env=self.env))
        time.sleep(1)
        # configless slurmd: it fetches slurm.conf + gres.conf from slurmctld and points the
        # jobs' SLURM_CONF at its cached copy, so `srun` inside a job finds the cluster too
        slurmd_env = {k: v for k, v in self.env.items() if k != "SLURM_CONF"}
        self.procs.append(subprocess.Popen([_sbin("slurmd"), "-D", "-N", self.node,
                                            "--conf-server", f"127.0.0.1:{self.ctl_port}"],
                                           stdout=open(log / "slurmd.out", "w"),
                                           stderr=subprocess.STDOUT, env=slurmd_env))
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                                 env=self.env)
            state = out.stdout.strip()
            if out.returncode == 0 and state in ("idle", "mix", "alloc"):
                return self
            if state.startswith(("drain", "inval")):
                break
            for p in self.procs:
                if p.poll() is not None:
                    break
            time.sleep(1)
        self.stop()
        raise RuntimeError("local SLURM did not come up: " + self.logs())

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.out", "slurmd.out", "slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text()[-1500:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        subprocess.run(["scancel", "--user", "root"], capture_output=True, env=self.env)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.procs.clear()


def main(argv=None) -> int:
    """``python -m tests.services.local_slurm COMMAND...``: COMMAND with a local SLURM up (its
    ``SLURM_CONF`` in the environment), as on a cluster's submit host; SLURM stops after it.
    The load benchmark's DAG and job-start numbers in tests/README.md were taken this way."""
    import sys
    import tempfile

    command = list(sys.argv[1:] if argv is None else argv)
    reason = missing_reason()
    if not command or reason:
        print(f"error: {reason or 'usage: python -m tests.services.local_slurm COMMAND...'}",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="local-slurm-") as root:
        slurm = LocalSlurm(Path(root)).start()
        try:
            return subprocess.run(command, env=slurm.env).returncode
        finally:
            slurm.stop()


if __name__ == "__main__":
    raise SystemExit(main())

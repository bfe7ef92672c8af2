"""MLflow on a real PostgreSQL server (initdb + pg_ctl as the `postgres` user, loopback port)."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.services.local_slurm import free_port
from tests.unit.test_tracking import ingest_and_check

pytestmark = pytest.mark.services


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for version in sorted(Path("/usr/lib/postgresql").glob("*"), reverse=True):
        if (version / "bin" / name).exists():
            return str(version / "bin" / name)
    return None


@pytest.fixture
def postgres_uri():
    tools = {n: _pg_bin(n) for n in ("initdb", "pg_ctl", "createdb")}
    if not all(tools.values()):
        pytest.skip("PostgreSQL not installed: run workflow/scripts/install_services.sh")
    pytest.importorskip("psycopg2", reason="psycopg2-binary missing (pip install -e .)")
    run_as: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server")
        run_as = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="pipelines-pg-"))
    if run_as:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = folder / "data", free_port()
    subprocess.run([*run_as, tools["initdb"], "-D", str(data), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*run_as, tools["pg_ctl"], "-D", str(data), "-l", str(folder / "log"), "-w",
                    "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        subprocess.run([*run_as, tools["createdb"], "-h", "127.0.0.1", "-p", str(port),
                        "-U", "postgres", "mlflow"], check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*run_as, tools["pg_ctl"], "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_ingest_into_postgresql(postgres_uri, tmp_path):
    ingest_and_check(tmp_path, postgres_uri)

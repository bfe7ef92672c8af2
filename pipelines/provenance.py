"""What produced a result: the git commit (and whether the tree was dirty) and library versions.

Recorded by ``train`` into its done file, and by ``ingest`` as tags of each MLflow child run
(:data:`pipelines.contract.GIT_COMMIT_TAG`, ``GIT_DIRTY_TAG``, ``VERSION_TAG_PREFIX``).
"""
from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

from pipelines.contract import PROVENANCE_LIBRARIES

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = {"torch": "torch", "mmcv": "mmcv", "mmengine": "mmengine",
                 "mmseg": "mmsegmentation", "mmdet": "mmdet"}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the project's checkout.

    Dirty means tracked files differ from the commit (untracked files such as results do not
    count). Outside a git checkout (an installed copy) both are None.
    """
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def library_versions() -> dict:
    out = {}
    for name in PROVENANCE_LIBRARIES:
        try:
            out[name] = importlib.metadata.version(DISTRIBUTIONS[name])
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def collect() -> dict:
    return {"git": git_state(), "versions": library_versions()}

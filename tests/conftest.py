"""Shared fixtures: a small synthetic dataset written once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "models" / "mask2former_r18_synthetic-128x128.py"
#: top-level folders that hold outputs, not documentation
NOT_DOCS = {"results", "data", "work_dirs"}


def readme_files() -> list[Path]:
    """Every ``README*.md`` of the checkout (hidden folders, links and outputs skipped), the top
    ``README.md`` first."""
    found = []
    for root, dirs, files in os.walk(REPO):
        top = Path(root) == REPO
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not (top and d in NOT_DOCS))
        found += [Path(root) / f for f in sorted(files)
                  if f.startswith("README") and f.endswith(".md")]
    return sorted(found, key=lambda p: (p != REPO / "README.md", str(p)))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env=None):
    """Run ``python -m pipelines ARGS`` in a fresh interpreter; returns CompletedProcess."""
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """12 train + 4 val images at 64x64 (seconds to write, enough to train a few iterations)."""
    from pipelines.data.synthetic import SyntheticSpec, write_dataset

    out = tmp_path_factory.mktemp("data") / "synthetic"
    write_dataset(out, SyntheticSpec(train=12, val=4, size=64, seed=3), progress=False)
    return out


# tiny runs: 64x64 inputs (the model is fully convolutional + deformable attention)
TINY_OPTIONS = (
    "model.data_preprocessor.size=(64,64)",
    "train_dataloader.dataset.pipeline.2.scale=(64,64)",
    "train_dataloader.dataset.pipeline.3.crop_size=(64,64)",
    "test_dataloader.dataset.pipeline.1.scale=(64,64)",
    "model.decode_head.train_cfg.num_points=1024",
)


def process_alive(pid: int | str) -> bool:
    """Whether process ``pid`` exists and is not a zombie (its ``/proc/<pid>/stat`` state)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def only_file(folder: Path, pattern: str) -> Path:
    """The one file under ``folder`` matching ``pattern``: outputs live in content-keyed folders
    (``<stage>/<ablation>/<run-id>/<recipe>/metrics.json``, ``ingest/<ablation>/<key>/...``,
    pipelines.grid.RunPaths), so tests find them without recomputing the key."""
    found = sorted(Path(folder).glob(pattern))
    assert len(found) == 1, f"{folder}/{pattern}: {[str(f) for f in found]}"
    return found[0]


def run_file(results: Path | str, stage: str, ablation: str, run_id: str, name: str) -> Path:
    """A run's output of one stage (``metrics.json`` of ``evaluate``...), in its recipe folder."""
    return only_file(Path(results) / stage / ablation / run_id, f"*/{name}")


def ablation_file(results: Path | str, stage: str, ablation: str, name: str) -> Path:
    """An ablation-wide output (``ingested.json``, ``paired.json``, ``runs.txt``) in the folder of
    the ablation's content key."""
    return only_file(Path(results) / stage / ablation, f"*/{name}")


def _checkout_state() -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file in the checkout's results/ and data/ folders."""
    out = {}
    for folder in (REPO / "results", REPO / "data"):
        for path in folder.rglob("*") if folder.is_dir() else ():
            try:
                if path.is_file():
                    stat = path.stat()
                    out[str(path.relative_to(REPO))] = (stat.st_size, stat.st_mtime_ns)
            except OSError:
                continue
    return out


@pytest.fixture(scope="session", autouse=True)
def checkout_results_untouched():
    """No test writes the checkout's results/ or data/ (the README runs `make demo` before
    `make test` in one clone, and CI does too): compared before and after the session."""
    before = _checkout_state()
    yield
    after = _checkout_state()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"tests changed the checkout's results/ or data/: {changed[:10]}"

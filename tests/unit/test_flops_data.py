"""``flops --data``: per-image FLOPs over a dataset's real images."""
from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_CONFIG, run_cli


def test_static_model_costs_the_same_on_every_image(synthetic_root, tmp_path):
    """A static model: every image's count equals the single-shape count, so the mean does."""
    out = tmp_path / "per_image.json"
    proc = run_cli("flops", str(TINY_CONFIG), "--data", str(synthetic_root), "--max-images",
                   "3", "--json", str(out), "--no-progress", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["images"] == 3 and len(report["per_image"]) == 3
    shape = report["per_image"][0]["shape"]
    single = tmp_path / "single.json"
    proc = run_cli("flops", str(TINY_CONFIG), "--shape", *map(str, shape), "--json", str(single),
                   env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    static = json.loads(single.read_text())["gflops"]
    for part, value in static.items():
        assert report["gflops"][part] == pytest.approx(value, rel=1e-12)
        assert report["gflops_std"][part] == 0.0
        assert report["gflops_min"][part] == report["gflops_max"][part]
        assert all(r["gflops"][part] == report["gflops"][part] for r in report["per_image"])


@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent/data"], "dataset folder missing"),
    (["--data", "DATA", "--max-images", "0"], "--max-images must be at least 1"),
    (["--max-images", "2"], "--max-images needs --data"),
    (["--data", "DATA", "--shape", "64", "64"], "--shape and --data exclude each other"),
])
def test_bad_input_is_one_line(synthetic_root, args, message):
    args = [str(synthetic_root) if a == "DATA" else a for a in args]
    proc = run_cli("flops", str(TINY_CONFIG), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1000:]
    assert "Traceback" not in proc.stderr

"""Fine-tuning and resume together: which start a training takes (pipelines.stages.train.choose_start)."""
from __future__ import annotations

from pipelines.stages.train import choose_start, own_last_checkpoint


def test_fresh_work_dir_loads_the_weights_only(tmp_path):
    assert choose_start(tmp_path, "/weights/parent.pth") == (False, "/weights/parent.pth")


def test_own_checkpoint_wins_over_load_from(tmp_path):
    ckpt = tmp_path / "iter_4.pth"
    ckpt.write_bytes(b"x")
    (tmp_path / "last_checkpoint").write_text(f"{ckpt}\n")
    assert own_last_checkpoint(tmp_path) == str(ckpt)
    assert choose_start(tmp_path, "/weights/parent.pth") == (True, None)


def test_marker_naming_a_missing_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_9.pth"))
    assert own_last_checkpoint(tmp_path) is None
    assert choose_start(tmp_path, "/w.pth") == (False, "/w.pth")


def test_no_load_from_resumes_or_starts_from_scratch(tmp_path):
    assert choose_start(tmp_path, None) == (True, None)
    assert choose_start(tmp_path, "") == (True, None)


# --- bad input: one line on stderr, exit 2, never a traceback or a silent success -----------

def _train(work, data_root, *options):
    from tests.conftest import TINY_CONFIG, TINY_OPTIONS, run_cli

    return run_cli("train", str(TINY_CONFIG), "--work-dir", str(work), "--data-root",
                   str(data_root), "--no-progress", "--cfg-options", *TINY_OPTIONS,
                   "train_cfg.max_iters=1", "train_cfg.val_interval=1", *options)


def _one_line(proc, start: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), proc.stderr[-2000:]


def test_a_schedule_that_trains_nothing_is_refused(tmp_path, synthetic_root):
    proc = _train(tmp_path / "w", synthetic_root, "train_cfg.max_iters=-5")
    _one_line(proc, "error: train_cfg.max_iters must be a whole number >= 1, got -5")


def test_a_last_checkpoint_that_is_not_one_is_refused(tmp_path, synthetic_root):
    import torch

    for name, write in (("text", lambda p: p.write_text("hello")),
                        ("dict", lambda p: torch.save({"hello": 1}, p))):
        work = tmp_path / name
        work.mkdir()
        write(work / "iter_4.pth")
        (work / "last_checkpoint").write_text(str(work / "iter_4.pth"))
        proc = _train(work, synthetic_root)
        _one_line(proc, "error: cannot ")


def test_an_image_that_is_not_one_is_named(tmp_path):
    from pipelines.data.synthetic import SyntheticSpec, write_dataset

    root = tmp_path / "data"
    write_dataset(root, SyntheticSpec(train=2, val=1, size=64, seed=3), progress=False)
    bad = sorted((root / "images" / "training").glob("*.jpg"))[0]
    bad.write_text("this is not a JPEG\n")
    proc = _train(tmp_path / "w", root, "train_dataloader.batch_size=2")
    _one_line(proc, f"error: cannot read image {bad}: not an image file")

"""Fine-tuning and resume together: which start a training takes (pipelines.train.choose_start)."""
from __future__ import annotations

from pipelines.train import choose_start, own_last_checkpoint


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

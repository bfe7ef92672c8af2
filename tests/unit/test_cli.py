"""Bad input to the stage CLI: one clear line on stderr, exit status 2, no traceback."""
from __future__ import annotations

import pytest

from tests.conftest import TINY_CONFIG, run_cli


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert err.count("\n") == 0, err
    for needle in needles:
        assert needle in err, err


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("data", "train", "evaluate"):
        assert command in proc.stdout


def test_unknown_command():
    _one_line_error(run_cli("frobnicate"), "invalid choice", "frobnicate")


def test_missing_config(tmp_path):
    _one_line_error(run_cli("train", str(tmp_path / "nope.py"), "--work-dir", str(tmp_path / "w")),
                    "config file not found")


def test_unknown_cfg_options_key(tmp_path, synthetic_root):
    proc = run_cli("train", str(TINY_CONFIG), "--work-dir", str(tmp_path / "w"), "--data-root",
                   str(synthetic_root), "--cfg-options", "train_cfg.max_itres=3")
    _one_line_error(proc, "unknown --cfg-options key", "max_itres")


def test_malformed_cfg_option(tmp_path):
    _one_line_error(run_cli("train", str(TINY_CONFIG), "--work-dir", str(tmp_path / "w"),
                            "--cfg-options", "novalue"), "KEY=VALUE")


def test_dataset_folder_missing(tmp_path):
    proc = run_cli("train", str(TINY_CONFIG), "--work-dir", str(tmp_path / "w"), "--data-root",
                   str(tmp_path / "no-such-data"))
    _one_line_error(proc, "dataset folder missing", "images/training")


def test_dataset_folder_empty(tmp_path):
    for sub in ("images/training", "annotations/training", "images/validation",
                "annotations/validation"):
        (tmp_path / "empty" / sub).mkdir(parents=True)
    proc = run_cli("train", str(TINY_CONFIG), "--work-dir", str(tmp_path / "w"), "--data-root",
                   str(tmp_path / "empty"))
    _one_line_error(proc, "dataset folder is empty")


def test_work_dir_not_writable(tmp_path, synthetic_root):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a work dir below a regular file cannot be created, even by root
    proc = run_cli("train", str(TINY_CONFIG), "--work-dir", str(blocker / "w"), "--data-root",
                   str(synthetic_root))
    _one_line_error(proc, "not writable")


def test_evaluate_missing_checkpoint(tmp_path):
    proc = run_cli("evaluate", str(TINY_CONFIG), str(tmp_path / "none.pth"), "--out",
                   str(tmp_path / "m.json"))
    _one_line_error(proc, "checkpoint not found")


@pytest.mark.parametrize("args", [["train"], ["evaluate", str(TINY_CONFIG)]])
def test_missing_arguments(args):
    _one_line_error(run_cli(*args), "required")


def test_bad_config_value_is_one_line(tmp_path, synthetic_root):
    proc = run_cli("train", str(TINY_CONFIG), "--work-dir", str(tmp_path / "w"), "--data-root",
                   str(synthetic_root), "--cfg-options",
                   "train_dataloader.dataset.pipeline.3.crop_size=[64,64]")  # a list, not a tuple
    _one_line_error(proc, "cannot train from this config", "crop_size")
    assert "Traceback" in (tmp_path / "w" / "error.log").read_text()


def test_corrupt_checkpoint_is_one_line(tmp_path, synthetic_root):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    proc = run_cli("evaluate", str(TINY_CONFIG), str(bad), "--out", str(tmp_path / "m.json"),
                   "--data-root", str(synthetic_root))
    _one_line_error(proc, "loading the checkpoint failed")
    assert not (tmp_path / "m.json").exists()

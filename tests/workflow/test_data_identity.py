"""The synthetic set is content too: a changed generator writes it again (and so retrains), an
unchanged one leaves it alone. Runs on a copy of the repository, whose generator it edits."""
from __future__ import annotations

from tests.workflow.conftest import write_config
from tests.workflow.test_recipe_identity import BASE, copy_repo, run_copy


def test_a_changed_generator_writes_the_dataset_again(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    data = tmp_path / "data" / "synthetic"
    config = {"name": "idt", "results": str(tmp_path / "results"),
              "data": {"root": str(data), "synthetic": {"train": 2, "val": 1, "size": 64,
                                                        "seed": 0}},
              "train": {"max_iters": 2}, "grid": {"variants": {"baseline": {"config": BASE}}},
              "stages": {"flops": False, "benchmark": False},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"}}
    configfile = write_config(tmp_path / "idt.yaml", config)
    target = str(data / "meta.json")
    proc, out = run_copy(repo, configfile, target)
    assert proc.returncode == 0, out[-3000:]
    proc, out = run_copy(repo, configfile, "-n", target)
    assert "Nothing to be done" in out, out[-3000:]
    generator = repo / "pipelines" / "data" / "synthetic.py"
    generator.write_text(generator.read_text() + "\nFORMAT_NOTE = 'edited by a test'\n")
    proc, out = run_copy(repo, configfile, "-n", target)
    assert proc.returncode == 0, out[-3000:]
    assert "generate_dataset" in out and "Params have changed" in out, out[-3000:]

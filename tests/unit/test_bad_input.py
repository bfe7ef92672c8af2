"""Bad input to the stage CLI is one line on stderr and exit status 2: never a
traceback, never a silent success, and nothing written (or lost) on the way.

One table: each case is a real ``python -m pipelines ...`` in a fresh interpreter
(:func:`tests.conftest.run_cli`, ``PYTHONWARNINGS=ignore``), its expected words, and the paths
that must not exist afterwards (``absent``) or must be left as they were (``kept``). Cases that
never import torch take about 2 s each (``FAST``); the ones that import torch and build a model
(evaluate, flops, grid --axes: ``MODEL``) 8 to 20 s, so they are marked slow.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_CONFIG, TINY_OPTIONS, run_cli

VIT_TINY = REPO / "configs" / "models" / "mask2former_vit-tiny_synthetic-128x128.py"


@dataclass
class Case:
    args: list[str]
    words: tuple[str, ...]
    absent: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def assert_refused(proc, case: Case) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    assert err and "\n" not in err, err[-3000:]
    for word in case.words:
        assert word in err, err


@pytest.fixture(scope="module")
def work(tmp_path_factory, synthetic_root) -> Path:
    """A folder with every input the cases need (made once: a checkpoint, a dataset with a
    broken image, a results folder, run files, a search space)."""
    root = tmp_path_factory.mktemp("bad_input")
    # a dataset whose validation split holds a `.jpg` that is not an image
    bad = root / "bad_data"
    shutil.copytree(synthetic_root, bad)
    (bad / "images" / "validation" / "zzz_broken.jpg").write_text("hello")
    (root / "good_data").symlink_to(synthetic_root)
    (root / "hello.pth").write_text("hello")  # a file that only pretends to be a checkpoint
    # the report's inputs: a results folder and run files, good and malformed
    (root / "results").mkdir()
    (root / "run_bad.json").write_text("{not json")
    (root / "run_noparams.json").write_text(json.dumps({"run_id": "x-seed0"}))
    (root / "out_folder").mkdir()
    (root / "out_folder" / "keep.txt").write_text("mine")
    # a YAML file with a syntax error on line 3
    (root / "broken.yaml").write_text("name: x\ngrid:\n  variants: [a, b\n  seed: [0]\n")
    # search spaces: the demo's, on an ablation whose results folder cannot be made (a file is
    # where a folder should be; root may write anywhere, so permissions would not do), and
    # one whose warm start is missing
    (root / "a_file").write_text("")
    demo = yaml.safe_load((REPO / "configs" / "ablations" / "demo.yaml").read_text())
    for variant in demo["grid"]["variants"].values():
        variant["config"] = str(REPO / variant["config"])
    demo["results"] = str(root / "a_file" / "results")
    demo["data"]["root"] = str(root / "data")
    (root / "ablation.yaml").write_text(yaml.safe_dump(demo))
    space = yaml.safe_load((REPO / "configs" / "search" / "demo.yaml").read_text())
    space["ablation"] = str(root / "ablation.yaml")
    space["warm_start"] = []
    (root / "space_unwritable.yaml").write_text(yaml.safe_dump(space))
    space["warm_start"] = [str(root / "no_such_grid.yaml")]
    (root / "space_warm.yaml").write_text(yaml.safe_dump(space))
    # MLflow stores: a text file named like one, a real one, and that one cut to a third
    (root / "notes.db").write_text("my notes, not a database\n")
    from pipelines.tracking.store import open_client

    client = open_client(f"sqlite:///{root / 'store.db'}")
    experiment = client.create_experiment("e")
    for i in range(20):
        client.log_metric(client.create_run(experiment).info.run_id, "miou", float(i))
    whole = (root / "store.db").read_bytes()
    (root / "cut.db").write_bytes(whole[:len(whole) // 3])
    # a model config that does not build (an unknown head type)
    (root / "unbuildable.py").write_text(
        f"_base_ = [{str(TINY_CONFIG)!r}]\nmodel = dict(decode_head=dict(type='NoSuchHead'))\n")
    return root


@pytest.fixture(scope="module")
def checkpoint(work) -> Path:
    """A checkpoint of the tiny R-18 model (random weights, saved as `train` saves one)."""
    import torch

    from pipelines.config import load_config
    from pipelines.registry import build_model

    path = work / "r18.pth"
    model = build_model(load_config(TINY_CONFIG, TINY_OPTIONS))
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


def cases(w: Path) -> dict[str, Case]:
    tiny = str(TINY_CONFIG)
    options = ["--cfg-options", *TINY_OPTIONS]

    def report(results: str, run_json: str, out: str) -> list[str]:
        return ["report", "--ablation", "x", "--results", str(w / results), "--runs",
                str(w / run_json), "--out", str(w / out)]
    return {
        # evaluate: a checkpoint of another model, a file that is no checkpoint, a broken image
        "evaluate_other_model": Case(
            ["evaluate", str(VIT_TINY), str(w / "r18.pth"), "--out", str(w / "m1.json"),
             "--data-root", str(w / "good_data"), "--work-dir", str(w / "ev1")],
            ("does not fit this config's model",), absent=[w / "m1.json"]),
        "evaluate_hello_checkpoint": Case(
            ["evaluate", tiny, str(w / "hello.pth"), "--out", str(w / "m2.json"),
             "--data-root", str(w / "good_data"), "--work-dir", str(w / "ev2"), *options],
            ("loading the checkpoint failed", "hello.pth"), absent=[w / "m2.json"]),
        "evaluate_mismatched_checkpoint": Case(
            ["evaluate", tiny, str(w / "r18.pth"), "--out", str(w / "m3.json"),
             "--data-root", str(w / "good_data"), "--work-dir", str(w / "ev3"), *options,
             "model.decode_head.num_queries=10"],
            ("does not fit this config's model", "size mismatch"), absent=[w / "m3.json"]),
        "evaluate_broken_image": Case(
            ["evaluate", tiny, str(w / "r18.pth"), "--out", str(w / "m4.json"),
             "--data-root", str(w / "bad_data"), "--work-dir", str(w / "ev4"), *options],
            ("not a readable image", "zzz_broken.jpg"), absent=[w / "m4.json"]),
        # flops
        "flops_data_broken_image": Case(
            ["flops", tiny, "--data", str(w / "bad_data"), "--json", str(w / "f1.json"),
             "--no-progress"],
            ("not a readable image", "zzz_broken.jpg"), absent=[w / "f1.json"]),
        "flops_shape_too_large": Case(
            ["flops", tiny, "--shape", "65536", "65536", "--json", str(w / "f2.json")],
            ("65536x65536 forward pass needs at least", "GiB"), absent=[w / "f2.json"]),
        # data
        "synthetic_size_too_large": Case(
            ["data", "synthetic", "--out", str(w / "syn"), "--size", "100000000"],
            ("needs at least", "GiB", "--size"), absent=[w / "syn"]),
        # figures / html-report: a store that cannot be read
        "figures_unknown_scheme": Case(
            ["figures", "--tracking-uri", "foo://x", "--experiment", "e", "--out",
             str(w / "fig")], ("tracking URI 'foo://x'", "expected sqlite"),
            absent=[w / "fig"]),
        "html_report_missing_sqlite": Case(
            ["html-report", "--tracking-uri", f"sqlite:///{w / 'none.db'}", "--experiment", "e",
             "--out", str(w / "html")], ("no such SQLite file",),
            absent=[w / "html", w / "none.db"]),
        **{f"{command}_{name}_store": Case(
            [command, "--tracking-uri", f"sqlite:///{w / db}", "--experiment", "e", "--out",
             str(w / f"{command}_{name}")], words, absent=[w / f"{command}_{name}"])
           for command in ("figures", "html-report", "analyse")
           for name, db, words in (("text", "notes.db", ("notes.db is not an SQLite database",)),
                                   ("truncated", "cut.db", ("cut.db", "malformed")))},
        # ui: a port no server can listen on
        "ui_port_out_of_range": Case(
            ["ui", "--tracking-uri", f"sqlite:///{w / 'store.db'}", "--experiment", "e",
             "--port", "99999", "--link-only"], ("--port", "99999", "1 to 65535")),
        # report
        "report_missing_results": Case(
            report("no_results", "run_bad.json", "r1.md"), ("results folder not found",),
            absent=[w / "r1.md"]),
        "report_malformed_run_json": Case(
            report("results", "run_bad.json", "r2.md"), ("run_bad.json is not JSON",),
            absent=[w / "r2.md"]),
        "report_run_json_without_params": Case(
            report("results", "run_noparams.json", "r3.md"), ("is not a run.json: no params",),
            absent=[w / "r3.md"]),
        "report_out_is_a_folder": Case(
            report("results", "run_noparams.json", "out_folder"), ("is a folder",),
            kept=[w / "out_folder" / "keep.txt"]),
        # grid
        "grid_yaml_syntax_error": Case(["grid", str(w / "broken.yaml")], ("line 4",)),
        "grid_axes_of_an_ablation": Case(
            ["grid", "--axes", str(REPO / "configs" / "ablations" / "demo.yaml")],
            ("not a model config",)),
        "grid_axes_unbuildable": Case(
            ["grid", "--axes", str(w / "unbuildable.py")], ("cannot build the model", "NoSuchHead")),
        # search
        "search_check_missing_warm_start": Case(
            ["search", str(w / "space_warm.yaml"), "--check"],
            ("warm_start", "no_such_grid.yaml")),
        "search_unwritable_results": Case(
            ["search", str(w / "space_unwritable.yaml"), "--no-mlflow"],
            ("search results folder", "not writable")),
    }


STORES = [f"{command}_{name}_store" for command in ("figures", "html-report", "analyse")
          for name in ("text", "truncated")]
FAST = [*STORES, "ui_port_out_of_range",
        "synthetic_size_too_large", "figures_unknown_scheme", "html_report_missing_sqlite",
        "report_missing_results", "report_malformed_run_json", "report_run_json_without_params",
        "report_out_is_a_folder", "grid_yaml_syntax_error", "grid_axes_of_an_ablation",
        "search_check_missing_warm_start", "search_unwritable_results"]
MODEL = ["evaluate_other_model", "evaluate_hello_checkpoint", "evaluate_mismatched_checkpoint", "evaluate_broken_image",
         "flops_data_broken_image", "flops_shape_too_large", "grid_axes_unbuildable"]


def test_every_case_is_listed(tmp_path):
    assert set(cases(tmp_path)) == set(FAST) | set(MODEL)


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in MODEL])
def test_bad_input_is_one_line_and_exit_2(work, name, request):
    if name in MODEL:
        request.getfixturevalue("checkpoint")
    case = cases(work)[name]
    kept = {p: p.read_bytes() for p in case.kept}
    assert_refused(run_cli(*case.args), case)
    for path in case.absent:
        assert not path.exists(), f"{name} wrote {path}"
    for path, data in kept.items():
        assert path.read_bytes() == data, f"{name} changed {path}"


@pytest.mark.slow
def test_evaluate_accepts_its_own_checkpoint(checkpoint, synthetic_root, tmp_path):
    """The strict load refuses only a mismatch: the same checkpoint evaluates."""
    out = tmp_path / "metrics.json"
    proc = run_cli("evaluate", str(TINY_CONFIG), str(checkpoint), "--out", str(out),
                   "--data-root", str(synthetic_root), "--cfg-options", *TINY_OPTIONS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 0 <= json.loads(out.read_text())["miou"] <= 100

"""ECO-M2F stages: derive-exits -> train-gate -> evaluate-gated on the synthetic set, in process.

Random weights (a checkpoint saved from the built model), 64x64 inputs, a few images: seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pipelines.registry  # noqa: F401
from pipelines.cli import main
from pipelines.eco_m2f.model import histogram, per_image_quality
from pipelines.eco_m2f.table import read_table
from tests.conftest import REPO, TINY_OPTIONS

ECO_TINY = REPO / "configs/models/mask2former_r18_ecom2f_synthetic-128x128.py"
OPTIONS = [o for o in TINY_OPTIONS if "train_dataloader.dataset.pipeline" not in o]


def save_random_checkpoint(path, seed):
    from mmengine.config import Config
    from mmengine.runner import save_checkpoint

    from pipelines.registry import build_model

    torch.manual_seed(seed)
    model = build_model(Config.fromfile(str(ECO_TINY)))
    save_checkpoint({"state_dict": model.state_dict(), "meta": {}}, str(path))
    return path


@pytest.fixture(scope="module")
def derived(tmp_path_factory, synthetic_root):
    """A checkpoint, its derived table (6 training images) and a second model's checkpoint."""
    tmp = tmp_path_factory.mktemp("eco")
    ck = save_random_checkpoint(tmp / "parent.pth", 0)
    other = save_random_checkpoint(tmp / "other.pth", 1)
    table = tmp / "table.parquet"
    rc = main(["derive-exits", str(ECO_TINY), str(ck), "--data-root", str(synthetic_root),
               "--out", str(table), "--batch-size", "4", "--max-images", "6",
               "--cfg-options", *OPTIONS])
    assert rc == 0
    return dict(tmp=tmp, ck=ck, other=other, table=table, data=synthetic_root)


def model_args(d, *extra):
    return [str(ECO_TINY), str(d["ck"]), "--data-root", str(d["data"]), *extra,
            "--cfg-options", *OPTIONS]


# --------------------------------------------------------------------------- pure helpers
def test_per_image_quality_counts_classes_in_gt_or_prediction():
    inter = torch.tensor([10., 0., 0., 5.])
    union = torch.tensor([20., 0., 4., 5.])  # class 1 absent from both: left out
    assert per_image_quality(inter, union) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert per_image_quality(torch.zeros(3), torch.zeros(3)) == 1.0
    assert histogram([2, 2, 6], (2, 3, 6)) == {"2": 2, "3": 0, "6": 1}


# --------------------------------------------------------------------------- the recipe
def test_derived_table_has_every_image_and_exit(derived):
    df, meta = read_table(derived["table"])
    feats, feats_meta = read_table(derived["table"].with_name("table.features.parquet"))
    assert meta["exits"] == [2, 3, 4, 5, 6] and meta["images"] == 6
    assert len(df) == 30 and sorted(set(df.exit)) == [2, 3, 4, 5, 6]
    assert df.groupby("image_id").size().eq(5).all()
    assert df.quality.between(0, 1).all()
    assert feats_meta["model_hash"] == meta["model_hash"] and len(meta["model_hash"]) == 64
    assert len(feats) == 6 and len(feats.feature[0]) == 256


def test_gate_per_beta_then_gated_evaluation(derived, tmp_path):
    summaries = {}
    for beta in (0.0, 0.5):
        rc = main(["train-gate", "--table", str(derived["table"]), "--beta", str(beta),
                   "--config", str(ECO_TINY), "--checkpoint", str(derived["ck"]),
                   "--epochs", "50", "--out", str(tmp_path / f"gate{beta}.pth"),
                   "--json", str(tmp_path / f"gate{beta}.json")])
        assert rc == 0
        summaries[beta] = json.loads((tmp_path / f"gate{beta}.json").read_text())
    # beta 0.5 outweighs any quality gain (q in [0, 1], 4 exits at most): all at the first exit
    assert summaries[0.5]["label_histogram"] == {"2": 6, "3": 0, "4": 0, "5": 0, "6": 0}
    assert summaries[0.5]["label_mean_exit"] <= summaries[0.0]["label_mean_exit"]

    out = tmp_path / "metrics.json"
    rc = main(["evaluate-gated", *model_args(derived, "--gate", str(tmp_path / "gate0.5.pth"),
                                              "--table", str(derived["table"]),
                                              "--out", str(out), "--batch-size", "2",
                                              "--max-images", "3")])
    assert rc == 0
    m = json.loads(out.read_text())
    assert {"miou", "aacc", "macc", "per_class_iou", "gflops_total", "mean_exit",
            "exit_histogram", "ladder", "oracle"} <= set(m)
    assert m["images"] == 3 and sum(m["exit_histogram"].values()) == 3
    ladder = {row["exit"]: row for row in m["ladder"]}
    assert list(ladder) == [2, 3, 4, 5, 6]
    steps = [ladder[k + 1]["gflops_encoder"] - ladder[k]["gflops_encoder"] for k in range(2, 6)]
    assert min(steps) > 0 and max(steps) == pytest.approx(min(steps))  # one layer per step
    # the gated model with its exits equals the ladder at those exits (plus the gate's FLOPs)
    if m["exit_histogram"]["2"] == 3:
        assert m["miou"] == pytest.approx(ladder[2]["miou"])
        gate_gflops = m["gflops_total"] - ladder[2]["gflops_total"]
        assert 0 < gate_gflops < 1e-5
    # beta 0.5: the oracle always takes the first exit
    assert m["oracle"]["exit_histogram"]["2"] == 3 and m["oracle"]["mean_exit"] == 2
    assert m["oracle"]["miou"] == pytest.approx(ladder[2]["miou"])


def test_forced_gate_equals_the_ladder(derived, tmp_path):
    """A gate whose bias forces exit 4 reproduces exit 4's mIoU; histogram all at 4."""
    from pipelines.models.early_exit import ExitGate

    ck = derived["ck"]
    meta = json.loads(json.dumps(read_table(derived["table"])[1]))
    gate = ExitGate(in_channels=256, num_exits=5)
    with torch.no_grad():
        gate.fc.weight.zero_()
        gate.fc.bias.copy_(torch.tensor([0., 0., 9., 0., 0.]))
    path = tmp_path / "forced.pth"
    torch.save({"state_dict": gate.state_dict(),
                "meta": dict(beta=0.0, exits=meta["exits"], model_hash=meta["model_hash"])},
               path)
    out = tmp_path / "m.json"
    assert main(["evaluate-gated", *model_args(derived, "--gate", str(path), "--out", str(out),
                                                "--max-images", "2")]) == 0
    m = json.loads(out.read_text())
    row = next(r for r in m["ladder"] if r["exit"] == 4)
    assert m["exit_histogram"]["4"] == 2 and m["mean_exit"] == 4
    assert m["miou"] == pytest.approx(row["miou"]) and ck.is_file()
    assert m["gflops_encoder"] == pytest.approx(row["gflops_encoder"])


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line_and_keeps_outputs(derived, tmp_path, capsys):
    keep = tmp_path / "gate.pth"
    keep.write_bytes(b"already computed")

    def refused(argv, words):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and words in err, err
        assert keep.read_bytes() == b"already computed"

    table = str(derived["table"])
    refused(["train-gate", "--table", table, "--beta", "-0.1", "--out", str(keep)],
            "beta must be a finite number >= 0")
    refused(["train-gate", "--table", str(tmp_path / "nope.parquet"), "--beta", "0.1",
             "--out", str(keep)], "derived table not found")
    refused(["train-gate", "--table", table, "--beta", "0.1", "--config", str(ECO_TINY),
             "--checkpoint", str(derived["other"]), "--out", str(keep)],
            "derived from another model")
    derive = ["derive-exits", *model_args(derived)[:4], "--out", str(keep), "--cfg-options"]
    refused([*derive, "model.decode_head.pixel_decoder.min_layers=7"], "above the encoder depth")
    refused([*derive, "model.decode_head.pixel_decoder.exit_distribution=[]"],
            "exit_distribution")
    refused(["evaluate-gated", str(ECO_TINY), str(derived["other"]), "--data-root",
             str(derived["data"]), "--gate", str(keep), "--table", table, "--out",
             str(tmp_path / "m.json")], "derived from another model")
    refused(["evaluate-gated", str(REPO / "configs/models/mask2former_r18_synthetic-128x128.py"),
             str(derived["ck"]), "--gate", str(keep), "--out", str(tmp_path / "m.json")],
            "no early-exit pixel decoder")


# --------------------------------------------------------------------------- cost
def test_gated_gflops_agree_with_flops_data(derived, tmp_path):
    """evaluate-gated's GFLOPs are what `flops --data` traces: per image on the real image
    (the gated model picks its own exit), and for a fixed exit over the dataset."""
    import argparse

    from pipelines.config import load_config
    from pipelines.eco_m2f.gate import load_gate
    from pipelines.eco_m2f.model import load_exit_model
    from pipelines.stages.flops import count_flops, dataset_inputs, per_image_report

    gate = tmp_path / "gate.pth"
    assert main(["train-gate", "--table", str(derived["table"]), "--beta", "0.0", "--epochs",
                 "20", "--out", str(gate)]) == 0
    out, flops_json = tmp_path / "m.json", tmp_path / "flops.json"
    assert main(["evaluate-gated", *model_args(derived, "--gate", str(gate), "--out", str(out),
                                                "--flops-json", str(flops_json),
                                                "--max-images", "2")]) == 0
    m, doc = json.loads(out.read_text()), json.loads(flops_json.read_text())
    assert doc["images"] == 2 and doc["gflops"]["total"] == pytest.approx(m["gflops_total"])
    assert sorted(r["exit"] for r in doc["per_image"]) == sorted(
        int(k) for k, n in m["exit_histogram"].items() for _ in range(n))

    # the gated model traced on each real image, as `flops --data` does; that trace loses the
    # gate's Linear (its logits leave the graph as Python ints), which evaluate-gated traces
    # on its own and adds: C x exits multiply-adds
    ns = argparse.Namespace(config=str(ECO_TINY), checkpoint=str(derived["ck"]), batch_size=1,
                            cfg_options=OPTIONS, data_root=str(derived["data"]), train_done=None)
    cfg, model, digest = load_exit_model(ns)
    pd_ = model.decode_head.pixel_decoder
    pd_.gate, pd_.test_exit = load_gate(gate, pd_, digest)[0], "gate"
    for (_, img), row in zip(dataset_inputs(model, cfg, str(derived["data"]), 2),
                             doc["per_image"]):
        traced = count_flops(model, tuple(img.shape[-2:]), img=img)["flops"]
        assert pd_.last_exits == [row["exit"]]
        gate_flops = 256 * 5
        for part in ("total", "pixel_decoder"):
            assert traced[part] + gate_flops == round(row["gflops"][part] * 1e9)
        assert traced["encoder"] == round(row["gflops"]["encoder"] * 1e9)

    # `flops --data` on the config with a fixed exit is that exit's ladder rung
    fixed = load_config(str(ECO_TINY), [*OPTIONS, "model.decode_head.pixel_decoder.test_exit=3"])
    report = per_image_report(fixed, str(derived["data"]), max_images=2, progress=False)
    rung = next(r for r in m["ladder"] if r["exit"] == 3)
    assert report["gflops"]["total"] == pytest.approx(rung["gflops_total"], rel=1e-9)


# --------------------------------------------------------------------------- in the workflow
def test_upstream_failure_is_passed_on_and_own_failure_recorded(tmp_path):
    from pipelines.stages.failures import read_failure

    failed = tmp_path / "derive.json"
    failed.write_text(json.dumps({"status": "failed", "stage": "train", "reason": "loss is nan"}))
    gate_json = tmp_path / "gate.json"
    # the table is never read: the upstream failure becomes this stage's output, exit 0
    assert main(["train-gate", "--table", str(tmp_path / "absent.parquet"), "--beta", "0.1",
                 "--out", str(tmp_path / "gate.pth"), "--json", str(gate_json),
                 "--upstream", str(failed)]) == 0
    assert read_failure(gate_json)["reason"] == "loss is nan"
    assert not (tmp_path / "gate.pth").exists()
    # on the last attempt a stage's own bad input is recorded in every JSON output
    out, flops_json = tmp_path / "m.json", tmp_path / "f.json"
    assert main(["evaluate-gated", str(ECO_TINY), str(tmp_path / "absent.pth"), "--gate",
                 str(tmp_path / "gate.pth"), "--out", str(out), "--flops-json",
                 str(flops_json), "--record-failure", "1"]) == 0
    for path in (out, flops_json):
        assert read_failure(path)["reason"].startswith("gate not found")


def test_any_config_key_is_an_axis_and_its_stage_reads_the_rendered_config(derived, tmp_path):
    """An exit_gate.epochs axis and an optimizer dict axis: each value is its own recipe, and
    the stage that uses the key reads it from the run's rendered config (the gate trains for
    1 or 300 epochs; the optimizer block steps the same weights to different values)."""
    from mmengine.optim import build_optim_wrapper

    from pipelines.grid import expand_grid, validate_ablation
    from pipelines.grid.render import load_rendered, render_run, write_configs
    from pipelines.registry import build_model

    ablation = validate_ablation({
        "name": "axes", "data": {"root": str(derived["data"])},
        "train": {"max_iters": 2, "cfg_options": OPTIONS},
        "grid": {"variants": {"eco": {"config": str(ECO_TINY), "axes": {
            "exit_gate.epochs": [1, 300],
            "optim_wrapper.optimizer": [{"lr": 0.001}, {"_delete_": True, "type": "SGD",
                                                        "lr": 0.5, "momentum": 0.9,
                                                        "weight_decay": 1e-4}]}}}}})
    runs = expand_grid(ablation, repo=REPO)
    assert len(runs) == 4 and len({r.train_recipe for r in runs}) == 4
    configs = {}
    for run in runs:
        path = tmp_path / run.run_id / "config.py"
        write_configs([(path, render_run(run, REPO))])
        configs[run.run_id] = path
    by = {(r.settings["exit_gate.epochs"], r.settings["optim_wrapper.optimizer"]["lr"]): r.run_id
          for r in runs}

    gates = {}
    for epochs in (1, 300):  # the gate stage as the workflow calls it: no --epochs
        config = configs[by[(epochs, 0.001)]]
        out = tmp_path / f"gate{epochs}"
        assert main(["train-gate", "--table", str(derived["table"]), "--beta", "0.0",
                     "--config", str(config), "--out", f"{out}.pth", "--json",
                     f"{out}.json"]) == 0
        gates[epochs] = json.loads(Path(f"{out}.json").read_text())
    assert gates[1]["settings"]["epochs"] == 1 and gates[300]["settings"]["epochs"] == 300
    assert gates[1]["train_loss"] != gates[300]["train_loss"]

    stepped = {}
    for lr in (0.001, 0.5):
        cfg = load_rendered(configs[by[(1, lr)]].read_text())
        torch.manual_seed(0)
        model = build_model(cfg)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        assert type(wrapper.optimizer).__name__ == ("AdamW" if lr == 0.001 else "SGD")
        params = [p for p in model.parameters() if p.requires_grad]
        loss = sum((p.float() ** 2).sum() for p in params[:3])
        wrapper.update_params(loss)
        stepped[lr] = params[0].detach().clone()
    assert not torch.equal(stepped[0.001], stepped[0.5])

"""``evaluate-gated``: the gated model, every fixed exit and the oracle on the validation images,
with the mean per-image GFLOPs of each (see :mod:`pipelines.eco_m2f`)."""
from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import List

from pipelines.config import ensure_writable_dir, write_json_atomic
from pipelines.eco_m2f.gate import load_gate
from pipelines.eco_m2f.model import (areas, batches, build_loader, histogram, load_exit_model,
                                     miou_from_areas, per_image_quality, predict, run_exits)
from pipelines.eco_m2f.table import check_same_model, read_table
from pipelines.errors import UserError


# traced GFLOPs depend on the architecture, the input shape and the exit, never on the weights:
# one process (a test run, a benchmark) traces each combination once
_TRACED: dict = {}


class ExitGflops:
    """Traced GFLOPs per (input shape, exit), and of the gate per res5 token count.

    In memory, per exit (the model traced with that exit forced): not
    :class:`pipelines.search.runs.FlopsCache`, which keeps one whole-model trace per run config
    in a JSON file; :func:`pipelines.stages.flops.count_flops` does the tracing for both."""

    def __init__(self, model):
        self.model = model
        self.arch = repr(model)  # the module tree with every layer's sizes

    def exit_gflops(self, hw, k) -> dict:
        from pipelines.stages.flops import count_flops
        from pipelines.models.early_exit import forced_exits

        key = (self.arch, tuple(hw), k)
        if key not in _TRACED:
            with forced_exits(self.model.decode_head.pixel_decoder, k):
                counted = count_flops(self.model, tuple(hw))
            _TRACED[key] = {part: v / 1e9 for part, v in counted["flops"].items()}
            _TRACED[("params", self.arch)] = counted["params"]
        return _TRACED[key]

    @property
    def params(self) -> dict:
        """Parameters per part (after a first :meth:`exit_gflops`)."""
        return _TRACED[("params", self.arch)]

    def gate_gflops(self, gate, hw) -> float:
        import torch
        from mmengine.analysis import FlopAnalyzer

        key = (repr(gate), tuple(hw))
        if key not in _TRACED:
            n = math.ceil(hw[0] / 32) * math.ceil(hw[1] / 32)
            channels = gate.fc.in_features
            analyzer = FlopAnalyzer(gate, (torch.zeros(1, n, channels),))
            analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            _TRACED[key] = analyzer.total() / 1e9
        return _TRACED[key]


def mean_gflops(per_image: List[dict]) -> dict:
    return {f"gflops_{part}": sum(g[part] for g in per_image) / len(per_image)
            for part in per_image[0]}


def evaluate_gated(model, gate, beta: float, loader, max_images=None):
    """The gated model, every fixed exit and the oracle on ``loader``'s images.

    Returns:
        ``(metrics, per_image)``: the metrics JSON of ``evaluate-gated`` and one row per image
        (``image``, ``shape``, ``exit``, ``gflops`` per part) of the gated model.
    """
    import torch

    pd_ = model.decode_head.pixel_decoder
    exits = list(pd_.exits)
    head = model.decode_head
    classes = loader.dataset.metainfo["classes"]
    pd_.gate = gate
    flops = ExitGflops(model)
    ladder_areas = {k: [] for k in exits}
    gated_areas, gated_exits, shapes, images = [], [], [], []
    for inputs, samples in batches(model, loader, max_images):
        preds, feats = run_exits(model, inputs, samples, exits)
        with torch.no_grad():
            gated = predict(model, inputs, samples, "gate", feats)
        gated_exits += pd_.last_exits
        shapes += [tuple(inputs.shape[-2:])] * len(samples)
        images += [s.metainfo.get("img_path", "") for s in samples]
        for i, sample in enumerate(samples):
            for k in exits:
                ladder_areas[k].append(areas(preds[k][i], sample, head.num_classes,
                                             head.ignore_index))
            gated_areas.append(areas(gated[i], sample, head.num_classes, head.ignore_index))
    if not gated_areas:
        raise UserError("no validation image to evaluate")
    # oracle: each image at the exit its own quality and the gate's beta pick
    from pipelines.models.early_exit import gate_labels

    quality = torch.tensor([[per_image_quality(ladder_areas[k][i][0], ladder_areas[k][i][1])
                             for k in exits] for i in range(len(gated_areas))])
    oracle_exits = [exits[j] for j in gate_labels(quality, exits, beta).tolist()]
    oracle_areas = [ladder_areas[k][i] for i, k in enumerate(oracle_exits)]

    def per_image_gflops(chosen, with_gate):
        per_image = []
        for hw, k in zip(shapes, chosen):
            g = dict(flops.exit_gflops(hw, k))
            if with_gate:
                extra = flops.gate_gflops(gate, hw)
                for part in ("pixel_decoder", "total"):
                    g[part] += extra
            per_image.append(g)
        return per_image

    def summary(areas_, chosen, with_gate):
        m = miou_from_areas(areas_, classes)
        m.update(mean_gflops(per_image_gflops(chosen, with_gate)),
                 mean_exit=sum(chosen) / len(chosen),
                 exit_histogram=histogram(chosen, exits))
        return m

    result = summary(gated_areas, gated_exits, True)
    def brief(m, *extra):
        return {key: v for key, v in m.items()
                if key in ("miou", "aacc", "macc", *extra) or key.startswith("gflops_")}

    result["ladder"] = [dict(exit=k, **brief(summary(ladder_areas[k], [k] * len(gated_areas),
                                                     False))) for k in exits]
    result["oracle"] = brief(summary(oracle_areas, oracle_exits, False), "mean_exit",
                             "exit_histogram")
    result.update(beta=beta, images=len(gated_areas), exits=exits,
                  gflops_note="mean per-image GFLOPs, each image traced at its exit and shape "
                              "(deformable sampling kernel not counted); gated includes the gate")
    rows = [dict(image=str(path), shape=list(hw), exit=k, gflops=g) for path, hw, k, g in
            zip(images, shapes, gated_exits, per_image_gflops(gated_exits, True))]
    return result, rows


def gated_flops_report(rows: List[dict], model, params: dict, config: str, data) -> dict:
    """``flops --data``'s document for the gated model from :func:`evaluate_gated`'s rows."""
    from pipelines.stages.flops import describe_pixel_decoder

    column = {p: [r["gflops"][p] for r in rows] for p in rows[0]["gflops"]}
    return {
        "config": str(config), "data": str(data), "images": len(rows), "batch": 1,
        "pixel_decoder": f"{describe_pixel_decoder(model)} gated", "count_sampling": False,
        "units": "GFLOPs (1e9, one multiply-add = one FLOP), per image at its gated exit, "
                 "gate included",
        "gflops": {p: statistics.fmean(v) for p, v in column.items()},
        "gflops_std": {p: statistics.pstdev(v) for p, v in column.items()},
        "gflops_min": {p: min(v) for p, v in column.items()},
        "gflops_max": {p: max(v) for p, v in column.items()},
        "params": params, "per_image": rows,
    }


def run(args: argparse.Namespace) -> int:
    from pipelines.stages.evaluate import _checkpoint

    out = Path(args.out)
    ensure_writable_dir(out.parent, "output folder")
    if args.flops_json:
        ensure_writable_dir(Path(args.flops_json).parent, "output folder")
    gate_path = Path(args.gate)
    if not gate_path.is_file():
        raise UserError(f"gate not found: {gate_path} (train it with `python -m pipelines "
                        "train-gate`)")
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be >= 1, got {args.max_images}")
    cfg, model, digest = load_exit_model(args)
    if args.table:
        check_same_model(read_table(Path(args.table))[1], digest, "derived table", args.table)
    gate, meta = load_gate(gate_path, model.decode_head.pixel_decoder, digest)
    loader = build_loader(cfg, "test", args.batch_size)
    result, rows = evaluate_gated(model, gate, float(meta["beta"]), loader, args.max_images)
    result.update(config=str(args.config), checkpoint=str(_checkpoint(args)),
                  gate=str(gate_path), model_hash=digest)
    if args.flops_json:
        params = ExitGflops(model).params
        write_json_atomic(args.flops_json, gated_flops_report(
            rows, model, params, args.config, cfg.test_dataloader.dataset.get("data_root")))
    write_json_atomic(out, result)
    print(f"beta {result['beta']}: mIoU {result['miou']:.2f}  mean GFLOPs "
          f"{result['gflops_total']:.3f}  mean exit {result['mean_exit']:.2f}  "
          f"(oracle mIoU {result['oracle']['miou']:.2f}) -> {out}")
    return 0

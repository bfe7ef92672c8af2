"""AiluRus token clustering in a full-size ViT-B/16 at 512x512: backbone CPU latency and FLOPs.

    .venv/bin/python -m pipelines.benchmarks.token_cluster_latency [--fractions 0.25]
        [--repeats 10] [--threads N] [--images 2] [--json OUT]

The backbone of ``configs/models/mask2former_vit-b16_ade20k-512x512.py`` (random weights, nothing
downloaded) is built once plain and once per anchor fraction as ``ClusterViT`` (the settings of
``configs/models/mask2former_vit-b16-cluster_ade20k-512x512.py``: clustering after block 2, k=5,
window radius 2, proportional attention) holding the same weights. Inputs are 512x512 images of
the project's synthetic generator (a random-noise input would make every token its own cluster).
All forwards, plus the clustering step alone on the block-2 tokens, are timed in one loop with
interleaved calls (:func:`pipelines.stages.timing.interleaved`), so the ratios are side by side under
the same load. FLOPs are traced (``mmengine``'s ``FlopAnalyzer`` + ``pipelines.stages.flop_handles``)
on the same images, with the clustering's own row, and checked against
``pipelines.stages.cost_model_vit``. Printed: medians, latency ratio, FLOPs ratio, and the clustering
step's share of the clustered backbone's time.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/models/mask2former_vit-b16-cluster_ade20k-512x512.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fractions", nargs="+", type=float, default=[0.25])
    p.add_argument("--images", type=int, default=2, help="synthetic 512x512 images (timed each)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="also write the results as JSON")
    return p.parse_args(argv)


def synthetic_images(count: int, size: int = 512):
    """``[count, 3, size, size]`` float images of the synthetic generator, normalised as the
    data preprocessor does (ImageNet mean / std)."""
    import numpy as np
    import torch

    from pipelines.data.synthetic import render_sample

    mean = np.array([123.675, 116.28, 103.53], dtype=np.float32)
    std = np.array([58.395, 57.12, 57.375], dtype=np.float32)
    imgs = [(render_sample(0, "validation", i, size)[0].astype(np.float32) - mean) / std
            for i in range(count)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def traced_flops(module, img) -> tuple:
    """``(total, clusterer)`` FLOPs of one traced forward."""
    import torch
    from mmengine.analysis import FlopAnalyzer
    from mmengine.analysis.complexity_analysis import _DEFAULT_SUPPORTED_FLOP_OPS

    from pipelines.stages.flop_handles import extra_flop_handles

    analyzer = FlopAnalyzer(module, (img,))
    analyzer.clear_op_handles().set_op_handle(**dict(_DEFAULT_SUPPORTED_FLOP_OPS,
                                                     **extra_flop_handles()))
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analyzer.tracer_warnings("none")
    with torch.no_grad():
        return int(analyzer.total()), int(analyzer.by_module().get("clusterer", 0))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from mmseg.models.backbones import VisionTransformer

    import pipelines.registry  # noqa: F401
    from pipelines.config import load_config, write_json_atomic
    from pipelines.models.token_cluster import ClusterViT
    from pipelines.models.vit_tokens import embed_tokens
    from pipelines.stages import cost_model_vit as cm
    from pipelines.stages.timing import interleaved, make_timer, paired_ratio, summarize

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(CONFIG)
    knobs = {k: cfg.model.backbone[k] for k in ("cluster_layer", "k", "window", "merge_radius",
                                                 "proportional_attn", "density_threshold")}
    vit_kw = {k: v for k, v in cfg.model.backbone.items()
              if k not in knobs and k not in ("type", "anchor_fraction", "_scope_")}
    vit_kw["drop_path_rate"] = 0.0
    plain = VisionTransformer(**vit_kw)
    plain.init_weights()
    plain.eval()
    models = {"plain": plain}
    for f in args.fractions:
        m = ClusterViT(anchor_fraction=f, **knobs, **vit_kw)
        m.load_state_dict(plain.state_dict())
        m.eval()
        models[f"anchors {f:g}"] = m
    spec = cm.spec_from_cfg(vit_kw)
    imgs = synthetic_images(args.images)
    hw = tuple(imgs.shape[-2:])
    n = (hw[0] // spec.patch_size) * (hw[1] // spec.patch_size)

    calls, flops, counts = {}, {}, {}
    for i in range(args.images):
        img = imgs[i:i + 1]
        with torch.no_grad():  # the tokens the clustering step sees (output of cluster_layer)
            x, grid = embed_tokens(plain, img)
            for layer in plain.layers[:knobs["cluster_layer"] + 1]:
                x = layer(x)
        for name, model in models.items():
            calls[f"{name}/img{i}"] = (lambda m=model, im=img: m(im))
            total, clus = traced_flops(model, img)
            if name == "plain":
                assert total == cm.backbone_flops(hw, spec)["backbone"]
            else:
                (m_tok,) = model.last_token_counts
                counts[(name, i)] = m_tok
                ana = cm.backbone_flops(hw, spec, cm.clustered_layer_tokens(
                    n, spec.depth, knobs["cluster_layer"], m_tok),
                    (knobs["window"], model.clusterer.tile))
                assert total == ana["backbone"] and clus == ana["cluster"]
                calls[f"{name}/clustering/img{i}"] = (
                    lambda m=model, t=x[:, 1:], g=grid: m.clusterer(t, g))
            flops[(name, i)] = (total, clus)
    load_before = os.getloadavg()[0]
    with torch.no_grad():
        times = interleaved(calls, args.repeats, args.warmup, make_timer("cpu"))
    load_after = os.getloadavg()[0]

    print(f"ViT-B/16 backbone, {hw[0]}x{hw[1]}, random weights, synthetic images, batch 1, "
          f"{torch.get_num_threads()} torch threads, {args.repeats} interleaved runs, load "
          f"average {load_before:.2f} -> {load_after:.2f}")
    print(f"{'model':<14}{'image':>6}{'tokens':>8}{'GFLOPs':>9}{'cluster GF':>11}"
          f"{'FLOPs ratio':>12}{'median ms':>11}{'latency ratio':>14}{'paired':>8}"
          f"{'clustering ms':>14}{'share':>7}")
    rows = []
    for i in range(args.images):
        base_t = times[f"plain/img{i}"]
        base_f = flops[("plain", i)][0]
        for name in models:
            t = times[f"{name}/img{i}"]
            total, clus = flops[(name, i)]
            row = {"model": name, "image": i, "tokens": counts.get((name, i), n),
                   "gflops": total / 1e9, "cluster_gflops": clus / 1e9,
                   "flops_ratio": total / base_f, "latency": summarize(t),
                   "latency_ratio": statistics.median(t) / statistics.median(base_t),
                   "paired_ratio": paired_ratio(t, base_t)}
            if name != "plain":
                c = times[f"{name}/clustering/img{i}"]
                row["clustering"] = summarize(c)
                row["clustering_share"] = statistics.median(c) / statistics.median(t)
            rows.append(row)
            share = row.get("clustering_share")
            print(f"{name:<14}{i:>6}{row['tokens']:>8}{row['gflops']:9.2f}"
                  f"{row['cluster_gflops']:11.3f}{row['flops_ratio']:12.3f}"
                  f"{row['latency']['median_ms']:11.1f}{row['latency_ratio']:14.3f}"
                  f"{row['paired_ratio']:8.3f}"
                  + (f"{row['clustering']['median_ms']:14.1f}{share:7.1%}" if share else ""))
    if args.json:
        write_json_atomic(args.json, {"shape": list(hw), "threads": torch.get_num_threads(),
                                      "repeats": args.repeats, "load": [load_before, load_after],
                                      "knobs": knobs, "rows": rows})
        print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""PRO-SCALE vs the Mask2Former R50 baseline: GFLOPs (traced and analytic) and CPU latency.

    .venv/bin/python -m pipelines.benchmarks.proscale_table [--shape 512 512] [--repeats 10]
        [--schedules 1,1,1 2,2,2 3,3,3] [--parts pixel_decoder model] [--json OUT]

Every model is built once with random weights (no download); the latencies of all of them are
measured in one loop with interleaved calls (:func:`pipelines.stages.timing.measure_models`), so the
ratios are side by side under the same machine load. PRO-SCALE rows have TRC and LPE on, as in
``configs/models/mask2former_r50_proscale-333_ade20k-512x512.py``; the schedule is the only
change between rows. Latency reduction / FLOPs reduction is printed for the pixel decoder
(the project's bar: at least 0.8 for (3, 3, 3)); it uses the ratio of medians. ``paired`` is the
median of per-round ratios (each pair timed back to back), steadier on a loaded machine.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "configs/models/mask2former_r50_ade20k-512x512.py"
PROSCALE = REPO / "configs/models/mask2former_r50_proscale-333_ade20k-512x512.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", nargs=2, type=int, default=(512, 512), metavar=("H", "W"))
    p.add_argument("--schedules", nargs="+", default=["1,1,1", "2,2,2", "3,3,3"])
    p.add_argument("--parts", nargs="+", default=["pixel_decoder", "model"],
                   choices=["pixel_decoder", "model"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); 1 "
                   "gives steadier ratios on a CPU shared with other jobs")
    p.add_argument("--json", help="also write the table as JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import pipelines.registry  # noqa: F401
    from pipelines.config import load_config, write_json_atomic
    from pipelines.registry import build_model
    from pipelines.stages.flops import flops_report, input_shape
    from pipelines.stages.timing import check_device, measure_models, paired_ratio

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    base_cfg = load_config(BASELINE)
    image_hw = input_shape(base_cfg, args.shape)
    backend = check_device(args.device, args.repeats, args.warmup)
    cfgs = {"baseline": base_cfg}
    for text in args.schedules:
        schedule = [int(p) for p in text.split(",")]
        key = "model.decode_head.pixel_decoder.schedule=" + str(tuple(schedule)).replace(" ", "")
        cfgs["(" + text + ")"] = load_config(PROSCALE, [key])
    models, flops = {}, {}
    for name, cfg in cfgs.items():
        models[name] = build_model(cfg)
        flops[name] = flops_report(cfg, image_hw, model=models[name])
    load_before = os.getloadavg()[0]
    times = measure_models(models, image_hw, args.device, args.repeats, args.warmup, args.parts)
    load_after = os.getloadavg()[0]

    base = flops["baseline"]["gflops"]
    base_t = times["baseline"]
    rows = []
    for name in cfgs:
        g, a = flops[name]["gflops"], flops[name]["analytic_gflops"]
        row = {"model": name, "encoder_gflops": g["encoder"], "encoder_gflops_analytic":
               a["encoder"], "pixel_decoder_gflops": g["pixel_decoder"],
               "pixel_decoder_gflops_analytic": a["pixel_decoder"], "total_gflops": g["total"],
               "encoder_flops_reduction": 1 - g["encoder"] / base["encoder"],
               "pixel_decoder_flops_reduction": 1 - g["pixel_decoder"] / base["pixel_decoder"]}
        for part in args.parts:
            t = times[name][part]
            row[f"{part}_latency_ms"] = t["median_ms"]
            row[f"{part}_latency_iqr_ms"] = t["iqr_ms"]
            row[f"{part}_latency_ratio"] = t["median_ms"] / base_t[part]["median_ms"]
            row[f"{part}_latency_paired_ratio"] = paired_ratio(t["times_ms"],
                                                               base_t[part]["times_ms"])
        if "pixel_decoder" in args.parts and name != "baseline":
            lat_red = 1 - row["pixel_decoder_latency_ratio"]
            row["pixel_decoder_latency_over_flops_reduction"] = \
                lat_red / row["pixel_decoder_flops_reduction"]
        rows.append(row)

    print(f"input {image_hw[0]}x{image_hw[1]}, batch 1, {args.device} "
          f"({torch.get_num_threads()} threads), random weights, {args.repeats} interleaved runs "
          f"after {args.warmup} warm-up; load average {load_before:.1f} -> {load_after:.1f}")
    print(f"deformable attention: {backend}; sampling kernel not counted in GFLOPs")
    head = (f"{'model':<10}{'enc GF':>8}{'(analytic)':>11}{'red':>7}{'PD GF':>8}{'(analytic)':>11}"
            f"{'red':>7}")
    for part in args.parts:
        short = "PD" if part == "pixel_decoder" else "model"
        head += f"{short + ' ms':>11}{'IQR':>7}{'ratio':>7}{'paired':>8}"
    if "pixel_decoder" in args.parts:
        head += f"{'lat/FLOPs red':>15}"
    print(head)
    for r in rows:
        line = (f"{r['model']:<10}{r['encoder_gflops']:8.2f}{r['encoder_gflops_analytic']:11.2f}"
                f"{100 * r['encoder_flops_reduction']:6.1f}%{r['pixel_decoder_gflops']:8.2f}"
                f"{r['pixel_decoder_gflops_analytic']:11.2f}"
                f"{100 * r['pixel_decoder_flops_reduction']:6.1f}%")
        for part in args.parts:
            line += (f"{r[f'{part}_latency_ms']:11.0f}{r[f'{part}_latency_iqr_ms']:7.0f}"
                     f"{r[f'{part}_latency_ratio']:7.3f}{r[f'{part}_latency_paired_ratio']:8.3f}")
        if "pixel_decoder_latency_over_flops_reduction" in r:
            line += f"{r['pixel_decoder_latency_over_flops_reduction']:15.2f}"
        print(line)
    if args.json:
        write_json_atomic(args.json, {"shape": list(image_hw), "device": args.device,
                                      "backend": backend, "repeats": args.repeats,
                                      "load_average": [load_before, load_after], "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

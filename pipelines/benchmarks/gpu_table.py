"""The GPU latency table in one command: every method against its baseline, paired
(workflow/README.md, "GPU latency").

``python -m pipelines.benchmarks.gpu_table --out DIR`` on a GPU node (the README's GPU
section gives the one command that also builds mmcv's CUDA ops and runs ``tests/gpu``).

For each comparison (PRO-SCALE (3,3,3)+TRC+LPE R50 / R50; AiluRus ViT-B/16 25 % anchors /
ViT-B/16; ATS DeiT-S / DeiT-S) it runs :func:`pipelines.stages.benchmark.benchmark` (random weights,
eval, ``no_grad``, models interleaved, CUDA events after warm-up) at 512x512, batch 1 and
``--batch`` (default 32), in ``--precisions`` (default fp32 fp16 bf16), and writes
``DIR/gpu_table.json`` (every document) and ``DIR/gpu_table.md`` (the paired median ratios
candidate / baseline of the whole model and the pixel decoder per setting, median / p90 / CV of
each side, the peak memory, the whole-model FLOPs ratio, and each comparison's verdict against
the targets: latency reduction at the throughput batch >= 0.8x the FLOPs reduction, batch 1 at
most 5 % slower than the baseline).

``--dry-run`` runs the same code on the CPU with the tiny synthetic configs at 64x64, batch 2,
one repeat: it checks the command end to end on a machine without a GPU; its figures mean
nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COMPARISONS = {  # name: (candidate config, baseline config, cfg-options of the candidate)
    "pro_scale_r50": ("configs/models/mask2former_r50_proscale-333_ade20k-512x512.py",
                      "configs/models/mask2former_r50_ade20k-512x512.py", []),
    "ailurus_vit-b16": ("configs/models/mask2former_vit-b16-cluster_ade20k-512x512.py",
                        "configs/models/mask2former_vit-b16_ade20k-512x512.py", []),
    "ats_deit-s": ("configs/models/mask2former_deit-s16-ats_ade20k-512x512.py",
                   "configs/models/mask2former_deit-s16_ade20k-512x512.py", []),
}
DRY = {  # the same comparisons on the tiny CPU configs
    "pro_scale_r50": ("configs/models/mask2former_r18_proscale-333_synthetic-128x128.py",
                      "configs/models/mask2former_r18_synthetic-128x128.py", []),
    "ailurus_vit-b16": ("configs/models/mask2former_vit-tiny-cluster_synthetic-128x128.py",
                        "configs/models/mask2former_vit-tiny_synthetic-128x128.py", []),
    "ats_deit-s": ("configs/models/mask2former_vit-tiny-ats_synthetic-128x128.py",
                   "configs/models/mask2former_vit-tiny_synthetic-128x128.py", []),
}


#: the targets a method's row is checked against: latency reduction at the throughput batch
#: at least this share of its FLOPs reduction, and at batch 1 at most this much slower
TARGET_SHARE = 0.8
TARGET_B1_SLOWDOWN = 1.05


def verdict(ratio_b1: float, ratio_bn: float, flops_ratio: float | None) -> str:
    """``ok`` or what misses the targets, for one comparison's whole-model ratios."""
    misses = []
    if ratio_b1 > TARGET_B1_SLOWDOWN:
        misses.append(f"batch 1 {100 * (ratio_b1 - 1):.0f} % slower than the baseline")
    if flops_ratio is not None and flops_ratio < 1:
        share = (1 - ratio_bn) / (1 - flops_ratio)
        if share < TARGET_SHARE:
            misses.append(f"latency red. {share:.2f}x the FLOPs red.")
    return "ok" if not misses else "; ".join(misses)


def markdown(docs: dict, host: dict | None = None) -> str:
    """The GPU table: one row per comparison and setting (median, p90, CV of the whole model
    over the timed runs; paired median ratios), the FLOPs ratio and the targets' verdict."""
    from pipelines.stages.timing import TIMED, stack_line

    first = next((d for d in docs.values() if "error" not in d), None)
    lines = []
    if first is not None:
        lines += [f"Input {first['shape'][0]}x{first['shape'][1]}, random weights, "
                  f"{first['warmup']} warm-up + {first['repeats']} timed runs per setting, "
                  f"candidate and baseline interleaved in one process (paired ratios: median "
                  f"over runs of candidate / baseline).", "",
                  f"Timed: {TIMED}.", ""]
    if host:
        lines += [f"Stack: {stack_line(host)}.", ""]
    lines += ["| comparison | setting | FLOPs ratio | model ratio | pixel decoder ratio | "
              "candidate ms (median / p90 / CV) | baseline ms (median / p90 / CV) | "
              "candidate peak MiB | baseline peak MiB | targets |",
              "|---|---|---|---|---|---|---|---|---|---|"]

    def ms(entry):
        m = entry["model"]
        return f"{m['median_ms']:.2f} / {m['p90_ms']:.2f} / {100 * m['cv']:.1f} %"

    for name, doc in docs.items():
        if "error" in doc:
            lines.append(f"| {name} | failed: {doc['error']} | | | | | | | | |")
            continue
        cand = doc["results"]["candidate"]["settings"]
        base = doc["results"]["baseline"]["settings"]
        flops = doc.get("flops_ratio")
        keys = list(doc["settings_ratios"])
        for key, ratio in doc["settings_ratios"].items():
            mem = [(s[key].get("peak_mem_mb")) for s in (cand, base)]
            precision = key.split("_b")[0]
            b1 = doc["settings_ratios"].get(f"{precision}_b1", ratio)["model"]
            bn = max((k for k in keys if k.startswith(precision + "_b")),
                     key=lambda k: int(k.split("_b")[1]))
            check = verdict(b1, doc["settings_ratios"][bn]["model"], flops) \
                if key == bn else ""
            lines.append(f"| {name} | {key} | {'-' if flops is None else f'{flops:.3f}'} | "
                         f"{ratio['model']:.3f} | {ratio['pixel_decoder']:.3f} | "
                         f"{ms(cand[key])} | {ms(base[key])} | "
                         + " | ".join("-" if m is None else f"{m:.0f}" for m in mem)
                         + f" | {check} |")
    return "\n".join(lines)


def flops_ratio(candidate, baseline, shape) -> float | None:
    """Whole-model GFLOPs candidate / baseline at ``shape`` (traced on the CPU, one image;
    a token-dropping model's count is that image's)."""
    from pipelines.stages.flops import flops_report

    try:
        return (flops_report(candidate, tuple(shape))["gflops"]["total"]
                / flops_report(baseline, tuple(shape))["gflops"]["total"])
    except Exception:  # noqa: BLE001 - the latency rows stand without it
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_table.json and gpu_table.md")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"])
    p.add_argument("--shape", nargs=2, type=int, default=[512, 512])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--only", nargs="+", choices=sorted(COMPARISONS), help="a subset")
    p.add_argument("--dry-run", action="store_true", help="tiny configs on the CPU (module doc)")
    args = p.parse_args(argv)

    import pipelines.registry  # noqa: F401
    from pipelines.config import load_config
    from pipelines.stages.benchmark import benchmark
    from pipelines.stages.timing import host_info

    table, device = COMPARISONS, "cuda"
    if args.dry_run:
        table, device = DRY, "cpu"
        args.shape, args.batch, args.repeats, args.warmup = [64, 64], 2, 1, 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = {}
    for name in args.only or table:
        cand, base, options = table[name]
        try:
            configs = {"candidate": load_config(cand, options), "baseline": load_config(base)}
            docs[name] = benchmark(configs, tuple(args.shape), device, args.repeats,
                                   args.warmup, args.batch, args.precisions)
            docs[name]["flops_ratio"] = flops_ratio(configs["candidate"], configs["baseline"],
                                                    args.shape)
        except Exception as err:  # noqa: BLE001 - one failing comparison must not stop the rest
            docs[name] = {"error": f"{type(err).__name__}: {err}"}
        print(f"{name}: {'failed: ' + docs[name]['error'] if 'error' in docs[name] else 'done'}",
              flush=True)
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()
    host = host_info(device)
    (out / "gpu_table.json").write_text(json.dumps({"host": host, "dry_run": args.dry_run,
                                                    "comparisons": docs}, indent=1))
    table_md = markdown(docs, host)
    (out / "gpu_table.md").write_text(table_md + "\n")
    print(table_md)
    return 1 if any("error" in d for d in docs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

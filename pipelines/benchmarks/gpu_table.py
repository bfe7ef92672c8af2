"""The README's GPU table in one call (issue 19): every method against its baseline, paired.

``python -m pipelines.benchmarks.gpu_table --out DIR`` (on the lent GPU machine, through
``../shared/gpu``'s ``.gpu/run.sh``; see the README's GPU section for the exact command).

For each comparison (PRO-SCALE (3,3,3)+TRC+LPE R50 / R50; AiluRus ViT-B/16 25 % anchors /
ViT-B/16; ATS DeiT-S / DeiT-S) it runs :func:`pipelines.benchmark.benchmark` (random weights,
eval, ``no_grad``, models interleaved, CUDA events after warm-up) at 512x512, batch 1 and
``--batch`` (default 32), in ``--precisions`` (default fp32 fp16 bf16), and writes
``DIR/gpu_table.json`` (every document) and ``DIR/gpu_table.md`` (the paired median ratios
candidate / baseline of the whole model and the pixel decoder per setting, with the peak memory).

``--dry-run`` runs the same code on the CPU with the tiny synthetic configs at 64x64, batch 2,
one repeat: it checks the command end to end where no GPU is lent; its figures mean nothing.
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


def markdown(docs: dict) -> str:
    """The GPU table: one row per comparison and setting."""
    lines = ["| comparison | setting | model ratio | pixel decoder ratio | candidate ms | "
             "baseline ms | candidate peak MiB | baseline peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for name, doc in docs.items():
        if "error" in doc:
            lines.append(f"| {name} | failed: {doc['error']} | | | | | | |")
            continue
        cand = doc["results"]["candidate"]["settings"]
        base = doc["results"]["baseline"]["settings"]
        for key, ratio in doc["settings_ratios"].items():
            mem = [(s[key].get("peak_mem_mb")) for s in (cand, base)]
            lines.append(f"| {name} | {key} | {ratio['model']:.3f} | "
                         f"{ratio['pixel_decoder']:.3f} | {cand[key]['model']['median_ms']:.2f} | "
                         f"{base[key]['model']['median_ms']:.2f} | "
                         + " | ".join("-" if m is None else f"{m:.0f}" for m in mem) + " |")
    return "\n".join(lines)


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
    from pipelines.benchmark import benchmark, host_info
    from pipelines.config import load_config

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
            docs[name] = benchmark({"candidate": load_config(cand, options),
                                    "baseline": load_config(base)}, tuple(args.shape), device,
                                   args.repeats, args.warmup, args.batch, args.precisions)
        except Exception as err:  # noqa: BLE001 - one failing comparison must not stop the rest
            docs[name] = {"error": f"{type(err).__name__}: {err}"}
        print(f"{name}: {'failed: ' + docs[name]['error'] if 'error' in docs[name] else 'done'}",
              flush=True)
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()
    (out / "gpu_table.json").write_text(json.dumps({"host": host_info(device), "dry_run":
                                                    args.dry_run, "comparisons": docs}, indent=1))
    table_md = markdown(docs)
    (out / "gpu_table.md").write_text(table_md + "\n")
    print(table_md)
    return 1 if any("error" in d for d in docs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

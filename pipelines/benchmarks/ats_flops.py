"""GFLOPs of the ATS classifier (DeiT-S, 224x224 by default) as a function of the patch tokens
each ATS block keeps, and the count that gives a published number (the paper: 4.6 -> 2.9 GFLOPs
with K = N).

ATS keeps a per-image, data-dependent number of tokens, so the paper's 2.9 G is a mean over
images with its trained weights; with the released DeiT-S weights, average the kept counts that
``SampleViT.last_token_counts`` records per ATS block and pass them to ``--kept``.

    python -m pipelines.benchmarks.ats_flops                 # table + the count for 2.9 G
    python -m pipelines.benchmarks.ats_flops --kept 150 120 100 90 80 70 60 50 40
    python -m pipelines.benchmarks.ats_flops --target 2.9 --json out.json

Counting convention and formulas: :mod:`pipelines.stages.cost_model_vit` (``ats_classifier_flops``;
the block formula is held equal to the traced count in ``tests/unit/test_vit_flops.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.stages.cost_model_vit import (
    ATS_LAYERS,
    DEIT_S,
    ats_classifier_flops,
    ats_kept_for_flops,
    patch_grid,
)


def report(target: float, kept=None, image_hw=(224, 224), step: int = 14) -> dict:
    """The numbers the command prints: the plain DeiT-S, a table over a constant kept count,
    the constant count that gives ``target`` GFLOPs, and the cost of ``kept`` when given."""
    h, w = patch_grid(image_hw, DEIT_S.patch_size)
    n = h * w
    out = dict(image_hw=list(image_hw), patch_tokens=n, ats_layers=list(ATS_LAYERS),
               plain_gflops=ats_classifier_flops(n, image_hw) / 1e9,
               table=[dict(kept=k, gflops=ats_classifier_flops(k, image_hw) / 1e9)
                      for k in range(n, 0, -step)])
    solved = ats_kept_for_flops(target * 1e9, image_hw)
    out["target"] = dict(gflops=target, kept=solved["exact"],
                         below=[solved["below"][0], solved["below"][1] / 1e9],
                         above=[solved["above"][0], solved["above"][1] / 1e9])
    if kept:
        out["kept"] = dict(counts=list(kept), gflops=ats_classifier_flops(list(kept),
                                                                           image_hw) / 1e9)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kept", type=int, nargs="+", metavar="K",
                   help=f"patch tokens kept by each of the {len(ATS_LAYERS)} ATS blocks "
                        "(or one count for all)")
    p.add_argument("--target", type=float, default=2.9, help="GFLOPs to solve for (2.9)")
    p.add_argument("--shape", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)
    if args.kept and len(args.kept) not in (1, len(ATS_LAYERS)):
        p.error(f"--kept takes 1 or {len(ATS_LAYERS)} counts, got {len(args.kept)}")
    kept = args.kept[0] if args.kept and len(args.kept) == 1 else args.kept
    try:
        out = report(args.target, [kept] * len(ATS_LAYERS) if isinstance(kept, int) else kept,
                     tuple(args.shape))
    except ValueError as e:
        print(f"ats_flops: {e}", file=sys.stderr)
        return 2
    print(f"DeiT-S ATS classifier at {args.shape[0]}x{args.shape[1]}, ATS in blocks "
          f"{ATS_LAYERS[0] + 1}..{ATS_LAYERS[-1] + 1}; {out['patch_tokens']} patch tokens; "
          f"plain {out['plain_gflops']:.3f} GFLOPs")
    print("kept per ATS block | GFLOPs")
    for row in out["table"]:
        print(f"{row['kept']:>18} | {row['gflops']:.3f}")
    t = out["target"]
    print(f"{t['gflops']} GFLOPs <=> {t['kept']:.1f} tokens kept at every ATS block "
          f"({t['below'][0]}: {t['below'][1]:.3f}, {t['above'][0]}: {t['above'][1]:.3f})")
    if "kept" in out:
        print(f"kept {out['kept']['counts']}: {out['kept']['gflops']:.3f} GFLOPs")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

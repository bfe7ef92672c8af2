"""``python -m pipelines data ...``: dataset commands."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="generate or prepare datasets")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND",
                                parser_class=type(p))
    s = data_sub.add_parser(
        "synthetic", help="write the synthetic multi-scale set in ADE20K's folder layout",
        description="Write the synthetic multi-scale set (textures x object sizes, small objects) "
        "in ADE20K's layout. The same seed gives byte-identical files.")
    s.add_argument("--out", required=True, help="dataset folder to write (replaced if it holds "
                   "an earlier synthetic set)")
    s.add_argument("--train", type=int, default=200, help="training images (default 200)")
    s.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    s.add_argument("--size", type=int, default=128, help="image side in px, a multiple of 32 "
                   "(default 128)")
    s.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=run_synthetic)
    lay = data_sub.add_parser(
        "layout", help="write a small folder in ADE20K's or Cityscapes' real layout",
        description="Write a few images in ADE20K's (ADEChallengeData2016: images/, "
        "annotations/, raw labels 0..150 with 0 ignored) or Cityscapes' layout (leftImg8bit/, "
        "gtFine/ with *_gtFine_labelIds.png and *_gtFine_labelTrainIds.png), to try "
        "configs/ablations/ade20k.yaml or cityscapes.yaml end to end before the real set.")
    lay.add_argument("layout", choices=("ade20k", "cityscapes"))
    lay.add_argument("--out", required=True, help="a new or empty folder")
    lay.add_argument("--train", type=int, default=4, help="training images (default 4)")
    lay.add_argument("--val", type=int, default=2, help="validation images (default 2)")
    lay.add_argument("--size", type=int, default=64, help="image side in px, a multiple of 32 "
                     "(default 64)")
    lay.add_argument("--seed", type=int, default=0, help="seed of the pictures (default 0)")
    lay.set_defaults(func=run_layout)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_synthetic(args: argparse.Namespace) -> int:
    from pipelines.data.synthetic import SyntheticSpec, write_dataset

    spec = SyntheticSpec(train=args.train, val=args.val, size=args.size, seed=args.seed)
    out = write_dataset(args.out, spec, progress=not args.no_progress)
    print(f"wrote {spec.train} training + {spec.val} validation images ({spec.size}x{spec.size}) "
          f"to {out}")
    return 0


def run_layout(args: argparse.Namespace) -> int:
    from pipelines.data.layout import write_layout

    out = write_layout(args.out, args.layout, args.train, args.val, args.size, args.seed)
    print(f"wrote {args.train} training + {args.val} validation images in {args.layout}'s "
          f"layout ({args.size}x{args.size}) to {out}")
    return 0

"""``derive-exits``: per-image quality of every exit on the training images, and each image's
gate input (see :mod:`pipelines.eco_m2f`)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipelines.config import ensure_writable_dir, write_json_atomic
from pipelines.eco_m2f.model import (areas, batches, build_loader, image_id, load_exit_model,
                                     per_image_quality, run_exits)
from pipelines.eco_m2f.table import features_path, write_table
from pipelines.errors import UserError


def derive(model, loader, max_images=None):
    """Rows ``(image_id, exit, quality)`` and gate features ``(image_id, feature)``."""
    import torch

    from pipelines.models.early_exit import ExitGate

    pd_ = model.decode_head.pixel_decoder
    num_classes = model.decode_head.num_classes
    ignore = model.decode_head.ignore_index
    rows, feats_rows = [], []
    for inputs, samples in batches(model, loader, max_images):
        preds, feats = run_exits(model, inputs, samples, pd_.exits)
        with torch.no_grad():
            tokens, *_ = pd_._encoder_tokens(list(feats))
            pooled = ExitGate.pool(tokens[0])
        for i, sample in enumerate(samples):
            name = image_id(sample)
            for k in pd_.exits:
                inter, union, _, _ = areas(preds[k][i], sample, num_classes, ignore)
                rows.append(dict(image_id=name, exit=int(k),
                                 quality=per_image_quality(inter, union)))
            feats_rows.append(dict(image_id=name, feature=pooled[i].tolist()))
    return rows, feats_rows


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    feats_out = features_path(out, args.features)
    ensure_writable_dir(out.parent, "output folder")
    ensure_writable_dir(feats_out.parent, "output folder")
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be >= 1, got {args.max_images}")
    cfg, model, digest = load_exit_model(args)
    loader = build_loader(cfg, "train", args.batch_size)
    start = time.perf_counter()
    rows, feats_rows = derive(model, loader, args.max_images)
    pd_ = model.decode_head.pixel_decoder
    meta = dict(model_hash=digest, config=str(args.config), checkpoint=str(args.checkpoint),
                exits=list(pd_.exits), images=len(feats_rows),
                feat_channels=len(feats_rows[0]["feature"]) if feats_rows else 0)
    write_table(feats_out, feats_rows, meta)
    write_table(out, rows, meta)
    seconds = time.perf_counter() - start
    if args.summary:
        write_json_atomic(args.summary, dict(meta, table=str(out), features=str(feats_out),
                                             seconds=seconds))
    print(f"{len(feats_rows)} images x {len(pd_.exits)} exits in {seconds:.1f} s -> {out}, "
          f"{feats_out}")
    return 0

"""ECO-M2F stages after training with exits: ``derive-exits``, ``train-gate``, ``evaluate-gated``.

* ``derive-exits CONFIG CHECKPOINT --out table.parquet``: the exit-trained model, frozen, runs
  every training image (test pipeline, no augmentation) through every exit, in batches (the
  backbone once per batch). The table (Parquet, one row per image and exit) holds ``image_id``,
  ``exit`` and ``quality``: the per-image mIoU in ``[0, 1]`` over the classes present in the
  ground truth or the prediction (our choice for semantic segmentation; the released code reads
  per-image panoptic quality). An image with no labelled pixel gets quality 1 at every exit. A
  second file (``--features``, default ``<out>.features.parquet``) holds each image's gate input:
  the average-pooled res5 tokens after the input projection. Both record the hash of the model
  (:func:`pipelines.eco_m2f.model.model_hash`) they were derived from; neither depends on beta.
* ``train-gate --table T --beta B --out gate.pth``: labels ``argmax_k (q_k - beta k)``, a
  ``Linear(C -> exits)`` trained with cross-entropy on the stored features (the parent model is
  not even loaded: it is frozen by construction). ``--config``/``--checkpoint`` check that the
  table was derived from that model.
* ``evaluate-gated CONFIG CHECKPOINT --gate gate.pth --out metrics.json``: the validation images
  through the gated model (exits chosen per image inside each batch) and through every fixed exit.
  The JSON has ``evaluate``'s names (``miou``, ``aacc``, ``macc``, ``per_class_iou``, ``units``),
  the mean per-image GFLOPs (``gflops_<part>``: each image's exit traced on its own shape by
  :func:`pipelines.stages.flops.count_flops`, plus the traced gate), ``mean_exit``, ``exit_histogram``,
  the ``ladder`` (every fixed exit's mIoU and GFLOPs) and the ``oracle`` (each image at the exit
  its own derived label picks, with the gate's beta): the gate's upper bound.

In the workflow (``workflow/rules/eco_m2f.smk``) each stage takes its input as the previous
stage's JSON: ``--train-done`` (the checkpoint ``train`` recorded), ``--upstream`` (the derive
summary of ``derive-exits --summary``, the gate summary of ``train-gate --json``); a failure record
there (``pipelines/stages/failures.py``) is passed on as this stage's output, and ``--record-failure 1``
(the last attempt) records this stage's own failure, so one failed run never blocks the others.
``evaluate-gated --flops-json`` writes the gated model's cost in ``flops --data``'s shape: the
mean per image under ``gflops`` (what ingest reads for a gated run), the spread and a row per
image.

Bad input (beta < 0, a missing or foreign table, a checkpoint without an early-exit pixel decoder,
an unwritable output) is one line and exit status 2, before anything is computed; outputs are
written atomically at the end, so nothing already computed is ever overwritten by a failed run.
"""
# The package: ``layout`` (where the workflow's stages write, which runs are gated), ``model`` (the
# exit-trained model and its data), ``table`` (the derived Parquet tables), the three stages
# (``derive``, ``gate``, ``gated``) and ``markdown`` (a gated run's section of the report).
# This module is their CLI; the stages import torch and the OpenMMLab stack only when they run.
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    common = dict(formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    p = sub.add_parser("derive-exits", help="ECO-M2F: per-image quality of every exit on the "
                       "training images (Parquet table)", **common)
    _model_args(p)
    p.add_argument("--out", required=True, help="table to write (.parquet)")
    p.add_argument("--summary", help="JSON summary to write (model hash, table paths)")
    _stage_args(p, None)
    p.add_argument("--features", help="gate inputs to write (default <out>.features.parquet)")
    p.add_argument("--max-images", type=int, help="only the first N training images")
    p.set_defaults(func=run_derive)

    p = sub.add_parser("train-gate", help="ECO-M2F: train the exit gate for one beta on a "
                       "derived table", **common)
    p.add_argument("--table", required=True, help="table written by derive-exits")
    p.add_argument("--features", help="its features file (default <table>.features.parquet)")
    p.add_argument("--beta", type=float, help="trade-off >= 0 (default: the config's "
                   "exit_gate.beta)")
    p.add_argument("--config", help="the parent's config (gate hyper-parameters: exit_gate)")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", default=[],
                   help="the run's config options (an exit_gate.* axis of the grid lands here)")
    p.add_argument("--checkpoint", help="the parent's checkpoint: refuse a table derived from "
                   "another model")
    p.add_argument("--epochs", type=int, help="full-batch Adam steps (default 300)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 0.01)")
    p.add_argument("--out", required=True, help="gate weights to write (.pth)")
    p.add_argument("--json", help="summary (labels, training accuracy) to write here")
    _stage_args(p, "the derive summary (derive-exits --summary)")
    p.set_defaults(func=run_train_gate)

    p = sub.add_parser("evaluate-gated", help="ECO-M2F: gated evaluation, exit ladder, oracle "
                       "(metrics JSON)", **common)
    _model_args(p)
    p.add_argument("--gate", required=True, help="gate written by train-gate")
    p.add_argument("--table", help="the derived table: checked to come from this model")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--flops-json", help="the gated model's per-image GFLOPs to write (the shape "
                   "of `flops --data`: mean under gflops)")
    p.add_argument("--max-images", type=int, help="only the first N validation images")
    _stage_args(p, "the gate summary (train-gate --json)")
    p.set_defaults(func=run_evaluate_gated)


def _model_args(p) -> None:
    p.add_argument("config", help="config of the exit-trained model")
    p.add_argument("checkpoint", nargs="?", help="its checkpoint (written by `train`; or "
                   "--train-done)")
    p.add_argument("--train-done", metavar="JSON", help="(used by the workflow) take the "
                   "checkpoint from this `train --done-file`; a failure record there is passed on")
    p.add_argument("--data-root", help="dataset folder (overrides data_root of every dataloader)")
    p.add_argument("--batch-size", type=int, default=4, help="images per batch (default 4)")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", default=[])


def _stage_args(p, upstream: str | None) -> None:
    if upstream:
        p.add_argument("--upstream", metavar="JSON", help=f"(used by the workflow) {upstream}: "
                       "a failure record there is passed on as this stage's output")
    p.add_argument("--record-failure", type=int, choices=(0, 1), default=0, metavar="0|1",
                   help="1: on failure write the JSON output(s) as a failure record and exit 0 "
                   "(the workflow's last attempt; pipelines/stages/failures.py)")


def run_derive(args: argparse.Namespace) -> int:
    from pipelines.eco_m2f.derive import run
    from pipelines.stages.failures import run_stage

    return run_stage("derive", run, args, outs=[args.summary], upstreams=[args.train_done],
                     record=bool(args.record_failure))


def run_train_gate(args: argparse.Namespace) -> int:
    from pipelines.eco_m2f.gate import run
    from pipelines.stages.failures import run_stage

    return run_stage("gate", run, args, outs=[args.json], upstreams=[args.upstream],
                     record=bool(args.record_failure))


def run_evaluate_gated(args: argparse.Namespace) -> int:
    from pipelines.eco_m2f.gated import run
    from pipelines.stages.failures import run_stage

    return run_stage("evaluate", run, args, outs=[args.out, args.flops_json],
                     upstreams=[args.train_done, args.upstream],
                     record=bool(args.record_failure))

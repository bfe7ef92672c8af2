"""ECO-M2F stages after training with exits: ``derive-exits``, ``train-gate``, ``evaluate-gated``.

* ``derive-exits CONFIG CHECKPOINT --out table.parquet``: the exit-trained model, frozen, runs
  every training image (test pipeline, no augmentation) through every exit, in batches (the
  backbone once per batch). The table (Parquet, one row per image and exit) holds ``image_id``,
  ``exit`` and ``quality``: the per-image mIoU in ``[0, 1]`` over the classes present in the
  ground truth or the prediction (our choice for semantic segmentation; the released code reads
  per-image panoptic quality). An image with no labelled pixel gets quality 1 at every exit. A
  second file (``--features``, default ``<out>.features.parquet``) holds each image's gate input:
  the average-pooled res5 tokens after the input projection. Both record the hash of the model
  (:func:`model_hash`) they were derived from; neither depends on beta.
* ``train-gate --table T --beta B --out gate.pth``: labels ``argmax_k (q_k - beta k)``, a
  ``Linear(C -> exits)`` trained with cross-entropy on the stored features (the parent model is
  not even loaded: it is frozen by construction). ``--config``/``--checkpoint`` check that the
  table was derived from that model.
* ``evaluate-gated CONFIG CHECKPOINT --gate gate.pth --out metrics.json``: the validation images
  through the gated model (exits chosen per image inside each batch) and through every fixed exit.
  The JSON has ``evaluate``'s names (``miou``, ``aacc``, ``macc``, ``per_class_iou``, ``units``),
  the mean per-image GFLOPs (``gflops_<part>``: each image's exit traced on its own shape by
  :func:`pipelines.flops.count_flops`, plus the traced gate), ``mean_exit``, ``exit_histogram``,
  the ``ladder`` (every fixed exit's mIoU and GFLOPs) and the ``oracle`` (each image at the exit
  its own derived label picks, with the gate's beta): the gate's upper bound.

In the workflow (``workflow/rules/eco_m2f.smk``) each stage takes its input as the previous
stage's JSON: ``--train-done`` (the checkpoint ``train`` recorded), ``--upstream`` (the derive
summary of ``derive-exits --summary``, the gate summary of ``train-gate --json``); a failure record
there (``pipelines/failures.py``) is passed on as this stage's output, and ``--record-failure 1``
(the last attempt) records this stage's own failure, so one failed run never blocks the others.
``evaluate-gated --flops-json`` writes the gated model's cost in ``flops --data``'s shape: the
mean per image under ``gflops`` (what ingest reads for a gated run), the spread and a row per
image.

Bad input (beta < 0, a missing or foreign table, a checkpoint without an early-exit pixel decoder,
an unwritable output) is one line and exit status 2, before anything is computed; outputs are
written atomically at the end, so nothing already computed is ever overwritten by a failed run.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
from pathlib import Path
from typing import Dict, List, Sequence

from pipelines.config import check_dataset, ensure_writable_dir, load_config, write_json_atomic
from pipelines.errors import UserError

TABLE_META = b"pipelines.eco_m2f"  # key of our metadata in the Parquet schema


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
                   "(the workflow's last attempt; pipelines/failures.py)")


def as_stage(stage: str, outs: Sequence, upstreams: Sequence, record: bool, fn, args) -> int:
    """Run ``fn(args)`` as a workflow stage over the JSON outputs ``outs``.

    A failure record among ``upstreams`` is passed on to every output (nothing runs); with
    ``record`` a failure of ``fn`` is written to every output and the exit status is 0.
    """
    import shutil

    from pipelines.failures import read_failure, recording_failures, upstream_failure

    outs = [Path(o) for o in outs if o]
    for path in (u for u in upstreams if u):
        failure = read_failure(path)
        if failure is not None:
            for out in outs:
                write_json_atomic(out, upstream_failure(stage, failure))
            print(f"{stage}: not run, {failure.get('stage', 'upstream')} failed "
                  f"({failure.get('reason')})")
            return 0
    with recording_failures(outs[0] if outs else None, stage, record):
        return fn(args)
    for out in outs[1:]:  # only reached when the failure was recorded in outs[0]
        shutil.copy(outs[0], out)
    return 0


# ----------------------------------------------------------------------------- workflow layout
GATE_AXIS = "beta"  # the gate-stage axis of pipelines/models/early_exit.py


def is_gated(run) -> bool:
    """A run of the recipe: its config builds early exit and it has a gate-stage ``beta``.
    ``run``: a :class:`pipelines.grid.Run` or its ``run.json`` dict."""
    if isinstance(run, dict):
        methods, stages = run.get("methods") or [], run.get("stages") or {}
    else:
        methods, stages = run.methods, run.stages
    return "early_exit" in methods and stages.get(GATE_AXIS) == "gate"


def stage_files(results: str, ablation: str, run) -> Dict[str, str]:
    """Where the workflow's ECO-M2F stages of ``run`` write.

    ``derive`` (summary JSON), ``table`` and ``features`` (Parquet) belong to the run's training
    (``results/derive/<ablation>/<train-id>/<train recipe>/``, shared by every beta); ``gate``
    (summary JSON) and ``gate_weights`` to the run (``results/gate/<ablation>/<run-id>/<recipe>/``):
    keyed by content like every other output (:class:`pipelines.grid.RunPaths`).
    """
    derive = Path(results) / "derive" / ablation / run.train_id / run.train_recipe
    gate = Path(results) / "gate" / ablation / run.run_id / run.recipe
    return {"derive": str(derive / "derive.json"), "table": str(derive / "quality.parquet"),
            "features": str(derive / "quality.features.parquet"),
            "gate": str(gate / "gate.json"), "gate_weights": str(gate / "gate.pth")}


def id_pattern(ids) -> str:
    """A regular expression matching exactly ``ids`` (and nothing when there is none)."""
    import re

    return "|".join(re.escape(i) for i in sorted(ids)) or "(?!)"


def report_lines(run_id: str, metrics_json) -> List[str]:
    """Markdown of one gated run for ``python -m pipelines report``: exit histogram, mean exit,
    the ladder (every fixed exit) and the oracle next to the gated model, from its metrics JSON;
    nothing for another run (or a missing or failed evaluation)."""
    import json

    try:
        evaluation = json.loads(Path(metrics_json).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(evaluation, dict) or "ladder" not in evaluation:
        return []
    hist = ", ".join(f"{k}: {n}" for k, n in evaluation.get("exit_histogram", {}).items())
    lines = [f"### `{run_id}` (beta {evaluation.get('beta')})", "",
             f"exit histogram (exit after encoder layer: images) {hist}; mean exit "
             f"{evaluation.get('mean_exit', float('nan')):.2f}", "",
             "| model | mIoU | mean GFLOPs total | mean GFLOPs pixel dec. | mean exit |",
             "|---|---|---|---|---|"]

    def row(name, m, mean_exit):
        return (f"| {name} | {m.get('miou', float('nan')):.2f} | "
                f"{m.get('gflops_total', float('nan')):.3f} | "
                f"{m.get('gflops_pixel_decoder', float('nan')):.3f} | {mean_exit:.2f} |")

    lines.append(row("gated", evaluation, evaluation.get("mean_exit", float("nan"))))
    lines.append(row("oracle", evaluation.get("oracle", {}),
                     evaluation.get("oracle", {}).get("mean_exit", float("nan"))))
    lines += [row(f"ladder: exit {r['exit']}", r, float(r["exit"]))
              for r in evaluation["ladder"]]
    return lines + [""]


# ----------------------------------------------------------------------------- pure helpers
def per_image_quality(intersect, union) -> float:
    """mIoU in ``[0, 1]`` over the classes present in the ground truth or the prediction."""
    present = union > 0
    if not bool(present.any()):
        return 1.0
    return float((intersect[present] / union[present]).mean())


def miou_from_areas(areas: Sequence, class_names: Sequence[str]) -> dict:
    """``evaluate``'s metrics JSON from per-image areas ``(intersect, union, pred, label)``."""
    import torch
    from mmseg.evaluation import IoUMetric

    from pipelines.evaluate import metrics_to_json

    total = [torch.stack([a[i] for a in areas]).sum(0) for i in range(4)]
    ret = IoUMetric.total_area_to_metrics(*total, ["mIoU"])
    nanmean = lambda x: float(torch.as_tensor(x).nanmean()) * 100  # noqa: E731
    metrics = {"aAcc": float(ret["aAcc"]) * 100, "mIoU": nanmean(ret["IoU"]),
               "mAcc": nanmean(ret["Acc"])}
    metrics.update({f"IoU.{name}": round(float(v) * 100, 2)
                    for name, v in zip(class_names, ret["IoU"])})
    return metrics_to_json(metrics)


def histogram(exits: Sequence[int], allowed: Sequence[int]) -> Dict[str, int]:
    return {str(k): sum(1 for e in exits if e == k) for k in allowed}


def model_hash(model) -> str:
    """sha256 of the model's weights (names, dtypes, shapes, bytes), gate excluded."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if ".pixel_decoder.gate." in f".{name}":
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- model and data
def load_exit_model(args):
    """Config, model (eval, CPU, checkpoint loaded strictly) and its hash."""
    import pipelines.registry  # noqa: F401
    from mmengine.runner import load_checkpoint

    from pipelines.evaluate import _checkpoint
    from pipelines.flops import build_model
    from pipelines.models.early_exit import EarlyExitPixelDecoder
    from pipelines.runner import CHECKPOINT_ERRORS

    checkpoint = _checkpoint(argparse.Namespace(checkpoint=args.checkpoint,
                                                train_done=getattr(args, "train_done", None)))
    if not checkpoint.is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    cfg = load_config(args.config, args.cfg_options, args.data_root)
    cfg.model.decode_head.pixel_decoder.pop("test_exit", None)  # the stages set the exits
    model = build_model(cfg)
    if not isinstance(model.decode_head.pixel_decoder, EarlyExitPixelDecoder):
        raise UserError(f"{args.config} has no early-exit pixel decoder (type "
                        f"{type(model.decode_head.pixel_decoder).__name__}); ECO-M2F needs "
                        "mmdet.EarlyExitPixelDecoder")
    try:
        load_checkpoint(model, str(checkpoint), map_location="cpu", strict=True,
                        logger="silent")
    except (*CHECKPOINT_ERRORS, KeyError) as err:
        raise UserError(f"cannot load {checkpoint} into {args.config}: {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}") from None
    return cfg, model.eval(), model_hash(model)


def build_loader(cfg, split: str, batch_size: int):
    """The test dataloader over ``split`` ('train' or 'test' images), no shuffling."""
    import copy

    from mmengine.runner import Runner

    loader = copy.deepcopy(cfg.test_dataloader)
    if split == "train":
        loader.dataset.data_prefix = copy.deepcopy(cfg.train_dataloader.dataset.data_prefix)
    loader.batch_size = batch_size
    loader.sampler = dict(type="DefaultSampler", shuffle=False)
    check_dataset(dict(loader=loader), ["loader"])
    return Runner.build_dataloader(loader)


def batches(model, loader, max_images: int | None):
    """``(inputs, data_samples)`` after the data preprocessor, at most ``max_images`` images.

    Images are preprocessed one by one and regrouped by size, so a dataset with images of
    different sizes runs in batches of equal-size images (never padded to each other).
    """
    import torch

    seen = 0
    for data in loader:
        groups: dict = {}
        for x, sample in zip(data["inputs"], data["data_samples"]):
            if max_images is not None and seen >= max_images:
                break
            one = model.data_preprocessor({"inputs": [x], "data_samples": [sample]}, False)
            groups.setdefault(tuple(one["inputs"].shape[-2:]), []).append(one)
            seen += 1
        for group in groups.values():
            yield (torch.cat([g["inputs"] for g in group]),
                   [g["data_samples"][0] for g in group])
        if max_images is not None and seen >= max_images:
            return


def predict(model, inputs, samples, exits, feats=None):
    """Label maps (one ``(H, W)`` tensor per image, original size) with ``exits`` forced."""
    import copy

    from pipelines.models.early_exit import forced_exits

    samples = [copy.copy(s) for s in samples]
    metas = [s.metainfo for s in samples]
    with forced_exits(model.decode_head.pixel_decoder, exits):
        if feats is not None and model.test_cfg.get("mode", "whole") == "whole":
            logits = model.decode_head.predict(feats, metas, model.test_cfg)
        else:
            logits = model.inference(inputs, metas)
    out = model.postprocess_result(logits, samples)
    return [s.pred_sem_seg.data[0] for s in out]


def areas(pred, sample, num_classes: int, ignore_index: int):
    from mmseg.evaluation import IoUMetric

    label = sample.gt_sem_seg.data[0].to(pred)
    return IoUMetric.intersect_and_union(pred, label, num_classes, ignore_index)


def image_id(sample) -> str:
    return Path(sample.metainfo.get("img_path", "")).stem


def run_exits(model, inputs, samples, exits_list):
    """Per-image areas of every exit of ``exits_list`` (the backbone runs once)."""
    import torch

    with torch.no_grad():
        feats = model.extract_feat(inputs)
        return {k: predict(model, inputs, samples, k, feats) for k in exits_list}, feats


# ----------------------------------------------------------------------------- table I/O
def write_table(path: Path, rows: List[dict], meta: dict) -> None:
    import json

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           TABLE_META: json.dumps(meta).encode()})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_table(path: Path, what: str = "derived table"):
    """``(DataFrame, meta)``; a missing or foreign file is a one-line UserError."""
    import json

    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path} (write it with `python -m pipelines "
                        "derive-exits`)")
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[TABLE_META])
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{path} is not a {what} of derive-exits: {type(err).__name__}") \
            from None
    return table.to_pandas(), meta


def features_path(table: Path, given: str | None) -> Path:
    return Path(given) if given else table.with_name(table.stem + ".features.parquet")


def check_same_model(meta: dict, expected_hash: str, what: str, path) -> None:
    if meta.get("model_hash") != expected_hash:
        raise UserError(f"{what} {path} was derived from another model (hash "
                        f"{str(meta.get('model_hash'))[:12]}, this checkpoint "
                        f"{expected_hash[:12]}); run derive-exits on this checkpoint")


# ----------------------------------------------------------------------------- derive-exits
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


def run_derive(args: argparse.Namespace) -> int:
    return as_stage("derive", [args.summary], [args.train_done], bool(args.record_failure),
                    _derive, args)


def _derive(args: argparse.Namespace) -> int:
    import time

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


# ----------------------------------------------------------------------------- train-gate
def quality_matrix(df, exits: Sequence[int]):
    """``(image_ids, (N, exits) quality tensor)`` from the long table."""
    import torch

    wide = df.pivot(index="image_id", columns="exit", values="quality")
    missing = [k for k in exits if k not in wide.columns]
    if missing or wide.isna().any().any():
        raise UserError(f"derived table is incomplete: exits {missing or 'some'} missing for "
                        "some images; derive it again")
    wide = wide[list(exits)]
    return list(wide.index), torch.tensor(wide.to_numpy(), dtype=torch.float32)


def fit_gate(features, labels, num_exits: int, epochs: int, lr: float, weight_decay: float,
             seed: int):
    """``ExitGate`` trained full-batch with Adam on cross-entropy; returns (gate, accuracy)."""
    import torch
    import torch.nn.functional as F

    from pipelines.models.early_exit import ExitGate

    torch.manual_seed(seed)
    gate = ExitGate(in_channels=features.shape[1], num_exits=num_exits)
    opt = torch.optim.Adam(gate.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        loss = F.cross_entropy(gate.fc(features), labels)
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = float((gate.fc(features).argmax(1) == labels).float().mean())
    return gate, accuracy, float(loss.detach())


def gate_settings(args) -> dict:
    settings = dict(beta=None, lr=0.01, weight_decay=1e-4, epochs=300, seed=0)
    if args.config:
        cfg = load_config(args.config)
        settings.update({k: v for k, v in dict(cfg.get("exit_gate", {}) or {}).items()
                         if k in settings})
    for key in ("beta", "epochs", "lr"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    beta = settings["beta"]
    if beta is None:
        raise UserError("no beta: pass --beta or a --config with exit_gate.beta")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise UserError(f"beta must be a finite number >= 0, got {beta!r}")
    if int(settings["epochs"]) < 1 or not float(settings["lr"]) > 0:
        raise UserError(f"epochs must be >= 1 and lr > 0, got {settings['epochs']}, "
                        f"{settings['lr']}")
    return settings


def run_train_gate(args: argparse.Namespace) -> int:
    return as_stage("gate", [args.json], [args.upstream], bool(args.record_failure),
                    _train_gate, args)


def _train_gate(args: argparse.Namespace) -> int:
    import torch

    from pipelines.models.early_exit import gate_labels

    settings = gate_settings(args)
    table = Path(args.table)
    df, meta = read_table(table)
    feats_df, feats_meta = read_table(features_path(table, args.features), "gate features file")
    if feats_meta.get("model_hash") != meta.get("model_hash"):
        raise UserError(f"{features_path(table, args.features)} and {table} come from "
                        "different models; derive them again together")
    if args.checkpoint:
        if not args.config:
            raise UserError("--checkpoint needs --config (to build the model it is hashed on)")
        ns = argparse.Namespace(config=args.config, checkpoint=args.checkpoint, batch_size=1,
                                cfg_options=[], data_root=None)
        check_same_model(meta, load_exit_model(ns)[2], "derived table", table)
    out = Path(args.out)
    ensure_writable_dir(out.parent, "output folder")
    exits = list(meta["exits"])
    ids, quality = quality_matrix(df, exits)
    by_id = dict(zip(feats_df["image_id"], feats_df["feature"]))
    if set(by_id) != set(ids):
        raise UserError(f"{table} and its features file list different images")
    features = torch.tensor([list(by_id[i]) for i in ids], dtype=torch.float32)
    labels = gate_labels(quality, exits, float(settings["beta"]))
    gate, accuracy, loss = fit_gate(features, labels, len(exits), int(settings["epochs"]),
                                    float(settings["lr"]), float(settings["weight_decay"]),
                                    int(settings["seed"]))
    label_exits = [exits[i] for i in labels.tolist()]
    summary = dict(beta=float(settings["beta"]), model_hash=meta["model_hash"], exits=exits,
                   images=len(ids), label_histogram=histogram(label_exits, exits),
                   label_mean_exit=sum(label_exits) / len(label_exits),
                   train_accuracy=accuracy, train_loss=loss,
                   settings={k: v for k, v in settings.items() if k != "beta"},
                   table=str(table))
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save({"state_dict": gate.state_dict(), "meta": summary}, tmp)
    os.replace(tmp, out)
    if args.json:
        write_json_atomic(args.json, summary)
    print(f"beta {summary['beta']}: labels {summary['label_histogram']}, training accuracy "
          f"{accuracy:.3f} -> {out}")
    return 0


# ----------------------------------------------------------------------------- evaluate-gated
def load_gate(path: Path, pixel_decoder, expected_hash: str):
    import torch

    from pipelines.models.early_exit import ExitGate

    if not path.is_file():
        raise UserError(f"gate not found: {path} (train it with `python -m pipelines "
                        "train-gate`)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta, state = blob["meta"], blob["state_dict"]
    except (Exception,) as err:  # noqa: BLE001 - any unreadable file is the user's
        raise UserError(f"{path} is not a gate of train-gate: {type(err).__name__}") from None
    check_same_model(meta, expected_hash, "gate", path)
    if list(meta["exits"]) != list(pixel_decoder.exits):
        raise UserError(f"gate {path} has exits {meta['exits']}, the model "
                        f"{list(pixel_decoder.exits)}")
    gate = ExitGate(in_channels=state["fc.weight"].shape[1], num_exits=len(meta["exits"]))
    gate.load_state_dict(state)
    return gate.eval(), meta


# traced GFLOPs depend on the architecture, the input shape and the exit, never on the weights:
# one process (a test session, a benchmark) traces each combination once
_TRACED: dict = {}


class FlopsCache:
    """Traced GFLOPs per (input shape, exit), and of the gate per res5 token count."""

    def __init__(self, model):
        self.model = model
        self.arch = repr(model)  # the module tree with every layer's sizes

    def exit_gflops(self, hw, k) -> dict:
        from pipelines.flops import count_flops
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
    flops = FlopsCache(model)
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
    import statistics

    from pipelines.flops import describe_pixel_decoder

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


def run_evaluate_gated(args: argparse.Namespace) -> int:
    return as_stage("evaluate", [args.out, args.flops_json], [args.train_done, args.upstream],
                    bool(args.record_failure), _evaluate_gated, args)


def _evaluate_gated(args: argparse.Namespace) -> int:
    from pipelines.evaluate import _checkpoint

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
        params = FlopsCache(model).params
        write_json_atomic(args.flops_json, gated_flops_report(
            rows, model, params, args.config, cfg.test_dataloader.dataset.get("data_root")))
    write_json_atomic(out, result)
    print(f"beta {result['beta']}: mIoU {result['miou']:.2f}  mean GFLOPs "
          f"{result['gflops_total']:.3f}  mean exit {result['mean_exit']:.2f}  "
          f"(oracle mIoU {result['oracle']['miou']:.2f}) -> {out}")
    return 0

"""The exit-trained model and its images, shared by the three ECO-M2F stages: loading it (and
hashing its weights), the data in batches of equal-size images, predictions at forced exits and
per-image quality."""
from __future__ import annotations

import argparse
import copy
import hashlib
from pathlib import Path
from typing import Dict, Sequence

from pipelines.config import check_dataset, load_config
from pipelines.errors import UserError


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

    from pipelines.stages.evaluate import metrics_to_json

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


def load_exit_model(args):
    """Config, model (eval, CPU, checkpoint loaded strictly) and its hash."""
    from mmengine.runner import load_checkpoint

    from pipelines.models.early_exit import EarlyExitPixelDecoder
    from pipelines.registry import build_model  # registers the plug-ins too
    from pipelines.stages.evaluate import _checkpoint
    from pipelines.stages.runner import CHECKPOINT_ERRORS

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

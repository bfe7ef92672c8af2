"""``python -m pipelines flops``: GFLOPs and parameters of a model config, by tracing the real model.

The model (random weights, never a pretrained download) is traced on CPU by
``mmengine.analysis.FlopAnalyzer`` (fvcore's counter): one multiply-add = one FLOP, Linear / conv
without bias, norms and bilinear resizes per element, element-wise ops free. The deformable
attention's sampling kernel (``grid_sample`` in mmcv's PyTorch fallback) is left out unless
``--count-sampling``, as in the papers, whose counter cannot see inside the CUDA op. Counting
always runs the PyTorch path on CPU, so the answer does not depend on the machine.

Reported parts (GFLOPs = 1e9 FLOPs, batch 1): ``backbone``; ``encoder`` (the transformer encoder
layers alone); ``pixel_decoder`` (all of it, encoder included); ``transformer_decoder``; ``total``
(the whole inference forward: backbone, decode head and its mask upsampling).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Sequence, Tuple

from pipelines.config import load_config, write_json_atomic
from pipelines.errors import UserError

# part name -> module path inside the segmentor, for every model; a method adds its own parts
# (its declaration's ``parts``, pipelines/methods/: AiluRus' ``cluster``), 0 for other models
BASE_PARTS = {
    "backbone": "backbone",
    "encoder": "decode_head.pixel_decoder.encoder",
    "pixel_decoder": "decode_head.pixel_decoder",
    "transformer_decoder": "decode_head.transformer_decoder",
}
SAMPLING_OP = "aten::grid_sampler"


def add_parser(sub) -> None:
    p = sub.add_parser("flops", help="count GFLOPs and parameters per part of a model "
                       "(traced; sampling kernel excluded by default)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="mmengine model config (configs/models/*.py)")
    p.add_argument("--shape", nargs=2, type=int, metavar=("H", "W"),
                   help="input size, multiples of 32 (default: the config's crop_size, else 512 512)")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", default=[])
    p.add_argument("--count-sampling", action="store_true",
                   help="also count the deformable sampling kernel (4 FLOPs per sampled value)")
    p.add_argument("--json", metavar="OUT", help="write the result as JSON here")
    p.add_argument("--data", metavar="DIR", help="count per image over the real images of this "
                   "dataset folder (the config's test split, through its test pipeline): mean, "
                   "std, min, max and a per-image table; the cost of a dynamic model")
    p.add_argument("--max-images", type=int, metavar="N", help="with --data: the first N images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar with --data")
    p.add_argument("--record-failure", type=int, choices=(0, 1), default=0, metavar="0|1",
                   help="1: if counting fails, write --json as a failure record and exit 0 "
                   "(the workflow's last attempt; pipelines/stages/failures.py)")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- shared helpers
def input_shape(cfg, shape: Sequence[int] | None) -> Tuple[int, int]:
    """The (H, W) to run at: ``--shape`` or the config's crop size; multiples of 32 only."""
    if shape is None:
        shape = tuple(cfg.get("crop_size", (512, 512)))
    if len(shape) != 2:
        raise UserError(f"--shape needs two numbers H W, got {list(shape)}")
    h, w = (int(s) for s in shape)
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise UserError(f"input shape {h}x{w} is not a positive multiple of 32 (the backbone's "
                        "coarsest stride); pass e.g. --shape 512 512")
    check_forward_memory(cfg, h, w)
    return h, w


def check_forward_memory(cfg, h: int, w: int) -> None:
    """Refuse an input whose forward pass certainly does not fit in memory, before building
    anything: a lower bound of what it holds at once (the float32 input image and the
    full-resolution class logits the segmentor returns, 4 bytes each per pixel)."""
    from pipelines.config import check_memory

    head = (cfg.get("model") or {}).get("decode_head") or {}
    classes = head.get("num_classes") if isinstance(head, dict) else None
    classes = classes if isinstance(classes, int) and classes > 0 else 1
    check_memory(4 * (3 + classes) * h * w, f"a {h}x{w} forward pass",
                 "pass a smaller --shape")


def inference_forward(model, image_hw: Tuple[int, int]):
    """A module ``img -> seg_logits``: the segmentor's whole-image inference (backbone, decode
    head, mask upsampling) without data samples, so that it can be traced."""
    import torch.nn as nn

    class InferenceForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.metas = [dict(img_shape=tuple(image_hw), pad_shape=tuple(image_hw),
                               ori_shape=tuple(image_hw))]

        def forward(self, img):
            feats = self.model.extract_feat(img)
            return self.model.decode_head.predict(feats, self.metas, self.model.test_cfg)

    return InferenceForward()


def describe_pixel_decoder(model) -> str:
    pd = model.decode_head.pixel_decoder
    name = type(pd).__name__
    if hasattr(pd, "schedule"):
        name += f"(schedule={tuple(pd.schedule)}, trc={pd.trc is not None}, lpe={pd.lpe})"
    return name


# ----------------------------------------------------------------------------- counting
def parts() -> dict:
    """Every counted part, name -> module path: :data:`BASE_PARTS`, then the methods' own."""
    from pipelines.methods import parts as method_parts

    return {**BASE_PARTS, **method_parts()}


def count_flops(model, image_hw: Tuple[int, int], count_sampling: bool = False,
                img=None) -> dict:
    """Trace ``model``'s inference on one image; FLOPs and parameters per part.

    Args:
        img: the (preprocessed) image ``(1, 3, H, W)`` to trace; None: zeros of ``image_hw``.
            A dynamic model (early exit, token clustering or sampling) takes that image's
            path, so its count is that image's.
    """
    import torch
    from mmengine.analysis import FlopAnalyzer
    from mmengine.analysis.complexity_analysis import _DEFAULT_SUPPORTED_FLOP_OPS

    from pipelines.stages.flop_handles import extra_flop_handles

    model = model.cpu().eval()
    wrapper = inference_forward(model, image_hw)
    img = torch.zeros(1, 3, *image_hw) if img is None else img
    analyzer = FlopAnalyzer(wrapper, (img,))
    # mmengine 0.10.7's set_op_handle(name, None) leaves the default handle in place (the op is
    # still counted), so the handle table is rebuilt without the sampling op instead.
    handles = dict(_DEFAULT_SUPPORTED_FLOP_OPS, **extra_flop_handles())  # + attention ops
    if not count_sampling:
        handles.pop(SAMPLING_OP)
    analyzer.clear_op_handles().set_op_handle(**handles)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analyzer.tracer_warnings("none")
    with torch.no_grad():
        by_module = analyzer.by_module()
        total = analyzer.total()
    counted = parts()
    flops = {part: int(by_module.get(f"model.{path}", 0)) for part, path in counted.items()}
    flops["total"] = int(total)
    stages = {f"stage{k}": int(sum(by_module.get(f"model.{counted['encoder']}.layers.{i}", 0)
                                   for i in layer_ids))
              for k, layer_ids in encoder_stage_layers(model).items()}
    modules = dict(model.named_modules())
    params = {part: sum(p.numel() for p in modules[path].parameters()) if path in modules else 0
              for part, path in counted.items()}
    params["total"] = sum(p.numel() for p in model.parameters())
    return {"flops": flops, "params": params, "encoder_stages": stages}


def encoder_stage_layers(model) -> dict:
    """Encoder layer indices per stage, keyed by the number of levels a stage attends to
    (PRO-SCALE's schedule; a plain encoder is one stage over every level)."""
    pd = model.decode_head.pixel_decoder
    layers = getattr(getattr(pd, "encoder", None), "layers", None)
    if layers is None:
        return {}
    from pipelines.models.pro_scale import stage_of_layers

    schedule = getattr(pd, "schedule", None)
    levels = (stage_of_layers(schedule) if schedule is not None
              else [pd.num_encoder_levels] * len(layers))
    out: dict = {}
    for i, k in enumerate(levels):
        out.setdefault(k, []).append(i)
    return out


def flops_report(cfg, image_hw: Tuple[int, int], count_sampling: bool = False,
                 model=None) -> dict:
    """The JSON document of the ``flops`` command (GFLOPs, parameters, analytic check)."""
    from pipelines.registry import build_model
    from pipelines.stages.cost_model import pixel_decoder_flops_from_cfg

    model = build_model(cfg) if model is None else model
    counted = count_flops(model, image_hw, count_sampling)
    gflops = {k: v / 1e9 for k, v in counted["flops"].items()}
    pd_cfg = dict(cfg.model.decode_head.pixel_decoder)
    head = cfg.model.decode_head  # Mask2FormerHead hands these to its pixel decoder
    pd_cfg.update(in_channels=list(head.in_channels), feat_channels=head.get("feat_channels", 256),
                  out_channels=head.get("out_channels", 256))
    try:
        analytic = pixel_decoder_flops_from_cfg(pd_cfg, image_hw, count_sampling)
        analytic = {k: analytic[k] / 1e9 for k in ("encoder", "pixel_decoder")}
    except (KeyError, ValueError):
        analytic = None  # a pixel decoder the cost model does not describe
    return {
        "config": str(cfg.filename), "shape": list(image_hw), "batch": 1,
        "pixel_decoder": describe_pixel_decoder(model),
        "count_sampling": bool(count_sampling), "units": "GFLOPs (1e9, one multiply-add = one FLOP)",
        "gflops": gflops, "params": counted["params"], "analytic_gflops": analytic,
        # traced encoder GFLOPs per stage (stage k attends to the k coarsest levels)
        "encoder_stages_gflops": {k: v / 1e9 for k, v in counted["encoder_stages"].items()},
    }


def dataset_inputs(model, cfg, data_root: str, max_images: int | None = None):
    """``(image path, preprocessed (1, 3, H, W) tensor)`` of the config's test images under
    ``data_root``, through its test pipeline and the model's data preprocessor."""
    from mmseg.registry import DATASETS

    from pipelines.config import check_dataset, set_data_root

    set_data_root(cfg, data_root)
    check_dataset(cfg, ["test_dataloader"], images=True)
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if n == 0:
        raise UserError(f"no images in the test split under {data_root}")
    for i in range(n):
        sample = dataset[i]
        data = model.data_preprocessor(dict(inputs=[sample["inputs"]],
                                            data_samples=[sample["data_samples"]]), False)
        yield sample["data_samples"].img_path, data["inputs"]


def per_image_report(cfg, data_root: str, max_images: int | None = None,
                     count_sampling: bool = False, progress: bool = True) -> dict:
    """The ``flops --data`` document: per-image GFLOPs over a dataset and their statistics.

    ``gflops`` holds the **mean** per image (what the papers report for dynamic models), so
    every consumer of the static report reads it unchanged; ``gflops_std``, ``gflops_min`` and
    ``gflops_max`` the spread, ``per_image`` one row per image.
    """
    from tqdm import tqdm

    from pipelines.registry import build_model

    if max_images is not None and max_images < 1:
        raise UserError(f"--max-images must be at least 1, got {max_images}")
    model = build_model(cfg)
    rows, params = [], None
    total = max_images
    for path, img in tqdm(dataset_inputs(model, cfg, data_root, max_images), total=total,
                          desc="flops", unit="img", disable=not progress):
        hw = tuple(int(s) for s in img.shape[-2:])
        counted = count_flops(model, hw, count_sampling, img=img)
        params = counted["params"]
        rows.append({"image": str(path), "shape": list(hw),
                     "gflops": {k: v / 1e9 for k, v in counted["flops"].items()}})
    parts = list(rows[0]["gflops"])
    column = {p: [r["gflops"][p] for r in rows] for p in parts}
    return {
        "config": str(cfg.filename), "data": str(data_root), "images": len(rows), "batch": 1,
        "pixel_decoder": describe_pixel_decoder(model), "count_sampling": bool(count_sampling),
        "units": "GFLOPs (1e9, one multiply-add = one FLOP), per image",
        "gflops": {p: statistics.fmean(v) for p, v in column.items()},
        "gflops_std": {p: statistics.pstdev(v) for p, v in column.items()},
        "gflops_min": {p: min(v) for p, v in column.items()},
        "gflops_max": {p: max(v) for p, v in column.items()},
        "params": params, "per_image": rows,
    }


def format_per_image(report: dict, limit: int = 20) -> str:
    lines = [f"{report['config']}  {report['images']} images of {report['data']}  "
             f"pixel decoder {report['pixel_decoder']}",
             f"{'part':<20}{'mean':>10}{'std':>10}{'min':>10}{'max':>10}"]
    for part in report["gflops"]:
        lines.append(f"{part:<20}" + "".join(f"{report[k][part]:10.3f}" for k in (
            "gflops", "gflops_std", "gflops_min", "gflops_max")))
    lines.append(f"{'image':<48}{'HxW':>12}{'total GFLOPs':>14}")
    for row in report["per_image"][:limit]:
        hw = "x".join(str(s) for s in row["shape"])
        lines.append(f"{Path(row['image']).name:<48}{hw:>12}{row['gflops']['total']:14.3f}")
    if report["images"] > limit:
        lines.append(f"... {report['images'] - limit} more in the JSON (--json)")
    return "\n".join(lines)


def format_table(report: dict) -> str:
    lines = [f"{report['config']}  input {report['shape'][0]}x{report['shape'][1]}  "
             f"pixel decoder {report['pixel_decoder']}",
             f"sampling kernel counted: {'yes' if report['count_sampling'] else 'no (papers)'}",
             f"{'part':<20}{'GFLOPs':>10}{'analytic':>10}{'params (M)':>12}"]
    for part in ("backbone", "cluster", "encoder", "pixel_decoder", "transformer_decoder",
                 "total"):
        ana = (report["analytic_gflops"] or {}).get(part)
        ana_s = f"{ana:10.3f}" if ana is not None else f"{'':>10}"
        lines.append(f"{part:<20}{report['gflops'][part]:10.3f}{ana_s}"
                     f"{report['params'][part] / 1e6:12.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    # option mistakes first, before torch and the OpenMMLab stack are imported
    if args.data and args.shape:
        raise UserError("--shape and --data exclude each other (--data uses each image's "
                        "size after the config's test pipeline)")
    if args.max_images is not None and not args.data:
        raise UserError("--max-images needs --data")
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be at least 1, got {args.max_images}")
    from pipelines.stages.failures import run_stage

    return run_stage("flops", _count, args, outs=[args.json],
                     record=bool(getattr(args, "record_failure", 0)))


def _count(args: argparse.Namespace) -> int:
    import pipelines.registry  # noqa: F401

    cfg = load_config(args.config, args.cfg_options)
    if args.data:
        report = per_image_report(cfg, args.data, args.max_images, args.count_sampling,
                                  progress=not args.no_progress)
        print(format_per_image(report))
    else:
        image_hw = input_shape(cfg, args.shape)
        report = flops_report(cfg, image_hw, args.count_sampling)
        print(format_table(report))
    if args.json:
        write_json_atomic(args.json, report)
        print(f"-> {args.json}")
    return 0

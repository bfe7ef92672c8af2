"""``python -m pipelines benchmark``: latency of the pixel decoder and of the whole model.

Random weights (no download), batch 1, ``torch.no_grad``, eval mode. Each measured call is timed
on its own (``torch.cuda.synchronize`` before and after on CUDA); after ``--warmup`` untimed
calls, ``--repeats`` timed calls give the median and the spread (IQR, q1..q3). With
``--baseline`` both models live in one process and their calls are interleaved (A B, then B A,
...), so a change in machine load hits both alike; the ratios candidate / baseline are reported.

Deformable attention backend: on CPU mmcv's ``MultiScaleDeformableAttention`` always runs its
PyTorch fallback (``grid_sample`` per level). On CUDA it runs mmcv's CUDA kernel when mmcv was
compiled with CUDA, otherwise the same PyTorch fallback on the GPU; the output says which.

Paired latency of a whole ablation (``--runs``; the workflow's one ``benchmark_ablation`` job):
every run's model (and the baseline variant's) is built in one process on one node and all
calls are interleaved in one loop, so every run is timed under the same load, on the same
device. The document names the host, CPU and GPU model, torch threads and library versions,
and each run also gets its own ``benchmark.json`` (``results.candidate`` = the run,
``results.baseline`` = the baseline run), the file ``ingest`` reads ``latency_ms`` from. A run
whose model cannot be built gets a failure record there instead (pipelines/stages/failures.py).

GPU settings (``--device cuda``): besides the batch-1 fp32 timing above (the keys
``results.<name>.{model,pixel_decoder}`` ingest has always read), every model is timed at batch
1 and at a throughput batch (``--batch``, default 32) in each of ``--precisions`` (default fp32
and fp16; bf16 optional: autocast, weights kept fp32), with CUDA events after the warm-up, the
calls of all models interleaved per setting. Each setting also records the forward's peak
memory: ``torch.cuda.max_memory_allocated`` over one whole-model call after a reset, minus what
was allocated before it (activations and workspace; the weights are ``weights_mb``). These go
under ``results.<name>.settings["<precision>_b<batch>"]`` and, for a paired run, as ratios under
``settings_ratios``; ingest logs them under the names of ``pipelines.contract.GPU_METRIC``.
On the CPU the settings are off unless ``--batch`` or ``--precisions`` is given (then timed with
``perf_counter``, no memory figure): today's CPU behaviour is unchanged.
"""
from __future__ import annotations

import argparse
import copy
from typing import Dict, List, Sequence, Tuple

from pipelines.config import load_config, write_json_atomic
from pipelines.errors import UserError
from pipelines.stages.flops import input_shape
from pipelines.stages.timing import (
    DEFAULT_GPU_BATCH,
    PARTS,
    PRECISIONS,
    TIMED,
    check_device,
    gpu_settings,
    host_info,
    measure_models,
    measure_settings,
    paired_ratio,
    setting_key,
    settings_ratios,
    stack_line,
)


def add_parser(sub) -> None:
    p = sub.add_parser("benchmark", help="measure pixel-decoder and whole-model latency "
                       "(median, IQR), optionally side by side with a baseline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="mmengine model config to measure (or --runs)")
    p.add_argument("--runs", nargs="+", metavar="RUN_JSON", help="paired latency of every run "
                   "of an ablation (run.json files), interleaved in this one process")
    p.add_argument("--results", default="results", help="with --runs: results folder; each "
                   "run's benchmark.json is written under it")
    p.add_argument("--ablation", help="with --runs: the ablation name")
    p.add_argument("--baseline-variant", default="baseline", help="with --runs: the variant "
                   "whose (first) run is the baseline of the ratios (default baseline)")
    p.add_argument("--baseline", metavar="CONFIG", help="a second config measured in the same "
                   "process, calls interleaved; ratios are candidate / baseline")
    p.add_argument("--shape", nargs=2, type=int, metavar=("H", "W"),
                   help="input size, multiples of 32 (default: the config's crop_size)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per part (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--batch", type=int, metavar="N", help="throughput batch timed besides batch "
                   f"1 (default on cuda: {DEFAULT_GPU_BATCH}; on cpu: none)")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, metavar="P",
                   help="fp32, fp16, bf16 (autocast) settings at batch 1 and --batch (default "
                   "on cuda: fp32 fp16; on cpu: none)")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", default=[],
                   help="applied to CONFIG and to --baseline")
    p.add_argument("--json", metavar="OUT", help="write the result as JSON here")
    p.set_defaults(func=run)


def benchmark(configs: Dict[str, object], image_hw: Tuple[int, int], device: str = "cpu",
              repeats: int = 20, warmup: int = 3, batch: int | None = None,
              precisions: Sequence[str] | None = None) -> dict:
    """Measure ``{'candidate': cfg[, 'baseline': cfg]}`` side by side; the JSON document."""
    import torch

    from pipelines.stages.flops import describe_pixel_decoder

    backend = check_device(device, repeats, warmup)
    settings = gpu_settings(device, batch, precisions)
    from pipelines.registry import build_model

    models = {name: build_model(cfg) for name, cfg in configs.items()}
    timings = measure_models(models, image_hw, device, repeats, warmup)
    if settings:
        for name, per in measure_settings(models, image_hw, device, settings, repeats,
                                          warmup).items():
            timings[name]["settings"] = per
    results = {name: dict(config=str(cfg.filename),
                          pixel_decoder_type=describe_pixel_decoder(models[name]),
                          **timings[name])
               for name, cfg in configs.items()}
    doc = {"shape": list(image_hw), "batch": 1, "precision": "fp32", "device": device,
           "deform_attn_backend": backend, "torch_threads": torch.get_num_threads(),
           "repeats": repeats, "warmup": warmup, "timed": TIMED, "host": host_info(device),
           "results": results}
    if "baseline" in configs:
        doc["ratios"] = {part: results["candidate"][part]["median_ms"]
                         / results["baseline"][part]["median_ms"] for part in PARTS}
        doc["latency_reduction"] = {part: 1 - r for part, r in doc["ratios"].items()}
        if settings:
            doc["settings_ratios"] = settings_ratios(results["candidate"]["settings"],
                                                     results["baseline"]["settings"])
    if settings:
        doc["settings"] = [setting_key(p, b) for p, b in settings]
    return doc


def format_table(doc: dict) -> str:
    """The document as a table a reviewer can check: what was timed, how often, where."""
    lines = [f"latency, input {doc['shape'][0]}x{doc['shape'][1]}, batch {doc.get('batch', 1)}, "
             f"{doc.get('precision', 'fp32')}, {doc['device']} ({doc['torch_threads']} "
             f"threads), {doc['repeats']} timed runs after {doc['warmup']} warm-up runs, "
             f"models interleaved in one process (the baseline re-run beside the candidate)",
             f"timed: {doc.get('timed', TIMED)}",
             f"deformable attention: {doc['deform_attn_backend']}"]
    if doc.get("host"):
        lines.append(f"stack: {stack_line(doc['host'])}")
    lines.append(f"{'model':<11}{'part':<15}{'median ms':>11}{'p90 ms':>9}{'CV %':>7}"
                 f"{'IQR ms':>9}  config")
    for name, res in doc["results"].items():
        for part in PARTS:
            s = res[part]
            lines.append(f"{name:<11}{part:<15}{s['median_ms']:11.1f}{s['p90_ms']:9.1f}"
                         f"{100 * s['cv']:7.1f}{s['iqr_ms']:9.1f}  {res['config']}")
    for part, ratio in doc.get("ratios", {}).items():
        lines.append(f"ratio candidate/baseline {part:<14} {ratio:.3f}  "
                     f"(reduction {100 * (1 - ratio):.1f}%)")
    return "\n".join(lines + format_settings(doc["results"], doc.get("settings_ratios")))


def format_settings(results: dict, ratios: dict | None = None) -> List[str]:
    """Lines of the per-setting medians (and paired ratios) of a document's results."""
    lines = []
    for name, res in results.items():
        for key, entry in (res.get("settings") or {}).items():
            mem = entry.get("peak_mem_mb")
            model = entry["model"]
            lines.append(f"{name:<11}{key:<10}model {model['median_ms']:9.2f} ms (p90 "
                         f"{model['p90_ms']:.2f}, CV {100 * model['cv']:.1f} %)  "
                         f"pix.dec {entry['pixel_decoder']['median_ms']:9.2f} ms  "
                         f"{entry['images_per_s']:8.1f} img/s  peak "
                         + ("-" if mem is None else f"{mem:.0f} MiB"))
    for key, parts in (ratios or {}).items():
        lines.append(f"ratio candidate/baseline {key:<10} model {parts['model']:.3f}  "
                     f"pixel_decoder {parts['pixel_decoder']:.3f}")
    return lines


# ----------------------------------------------------------------------------- paired ablation
def benchmark_runs(runs: List[dict], image_hw: Tuple[int, int] | None, device: str = "cpu",
                   repeats: int = 20, warmup: int = 3, baseline_variant: str = "baseline",
                   batch: int | None = None, precisions: Sequence[str] | None = None
                   ) -> Tuple[dict, Dict[str, dict]]:
    """Time every run's model interleaved in this process (see the module doc).

    Args:
        runs: run dicts (``run.json``: ``run_id``, ``variant``, ``config_file``: the run's
            rendered config).
        image_hw: input size; None takes the first run's config crop size.
        baseline_variant: the variant whose first run the ratios divide by.

    Returns:
        ``(paired document, {run_id: the run's own benchmark.json document})``; a run whose
        model does not build gets a failure record as its document.
    """
    from pipelines.methods import not_timed_reason
    from pipelines.registry import build_model
    from pipelines.stages.failures import failure_record
    from pipelines.stages.flops import describe_pixel_decoder

    backend = check_device(device, repeats, warmup)
    settings = gpu_settings(device, batch, precisions)
    models, configs, per_run = {}, {}, {}
    for run in runs:
        reason = not_timed_reason(run)
        if reason is not None:
            # a later stage of its method completes its model (ECO-M2F's gate picks the exit
            # per image): timing the trained model here would time a number the run never has
            per_run[run["run_id"]] = {"not_timed": reason, "paired": False}
            continue
        try:
            cfg = load_config(run["config_file"])
            models[run["run_id"]] = build_model(cfg)
            configs[run["run_id"]] = cfg
        except Exception as err:  # noqa: BLE001 - one broken run must not stop the others
            per_run[run["run_id"]] = failure_record("benchmark", err)
    if not models and all("not_timed" in v for v in per_run.values()):
        return {"paired": False, "order": [], "results": {}, "failed": {},
                "not_timed": sorted(per_run)}, per_run
    if not models:
        raise UserError("no run's model could be built: "
                        + "; ".join(f"{k}: {v['reason']}" for k, v in per_run.items()))
    first = next(iter(configs.values()))
    image_hw = tuple(image_hw) if image_hw else input_shape(first, None)
    timings = measure_models(models, image_hw, device, repeats, warmup)
    if settings:
        for name, per in measure_settings(models, image_hw, device, settings, repeats,
                                          warmup).items():
            timings[name]["settings"] = per
    baseline = next((r["run_id"] for r in runs if r.get("variant") == baseline_variant
                     and r["run_id"] in timings), None)
    host = host_info(device)
    common = {"shape": list(image_hw), "batch": 1, "device": device,
              "deform_attn_backend": backend, "torch_threads": host["torch_threads"],
              "repeats": repeats, "warmup": warmup, "host": host, "paired": True,
              "baseline_run": baseline}
    if settings:
        common["settings"] = [setting_key(p, b) for p, b in settings]
    results = {}
    for run_id, timing in timings.items():
        results[run_id] = dict(config=str(configs[run_id].filename),
                               pixel_decoder_type=describe_pixel_decoder(models[run_id]),
                               **timing)
    doc = {**common, "order": list(timings), "results": results, "failed": {
        k: v["reason"] for k, v in per_run.items() if "reason" in v},
        "not_timed": sorted(k for k, v in per_run.items() if "not_timed" in v)}
    for run_id, res in results.items():
        own = {**common, "results": {"candidate": res}}
        if baseline is not None:
            base = results[baseline]
            own["results"]["baseline"] = base
            own["ratios"] = {part: paired_ratio(res[part]["times_ms"],
                                                base[part]["times_ms"]) for part in PARTS}
            if settings:
                own["settings_ratios"] = settings_ratios(res["settings"], base["settings"])
        per_run[run_id] = copy.deepcopy(own)
    return doc, per_run


def format_runs_table(doc: dict) -> str:
    not_timed = [f"{run_id:<40} not timed: a later stage completes its model "
                 "(its benchmark.json says why)" for run_id in doc.get("not_timed", [])]
    if not doc["results"]:
        return "\n".join(["paired latency: no run timed"] + not_timed)
    host = doc["host"]
    lines = [f"paired latency, input {doc['shape'][0]}x{doc['shape'][1]}, batch 1, "
             f"{doc['device']} on {host['host']} ({host['gpu'] or host['cpu']}, "
             f"{doc['torch_threads']} threads), {doc['repeats']} interleaved rounds after "
             f"{doc['warmup']} warm-up", f"{'run':<40}{'model ms':>10}{'pix.dec ms':>12}"]
    for run_id, res in doc["results"].items():
        lines.append(f"{run_id:<40}{res['model']['median_ms']:10.1f}"
                     f"{res['pixel_decoder']['median_ms']:12.1f}")
    for run_id, reason in doc["failed"].items():
        lines.append(f"{run_id:<40} FAILED: {reason}")
    return "\n".join(lines + not_timed + format_settings(doc["results"]))


def run_ablation(args: argparse.Namespace) -> int:
    from pipelines.grid import RunPaths
    from pipelines.stages.disk import read_run_files

    if not args.ablation or not args.json:
        raise UserError("--runs needs --ablation and --json")
    runs = read_run_files(args.runs)
    doc, per_run = benchmark_runs(runs, args.shape, args.device, args.repeats, args.warmup,
                                  args.baseline_variant, args.batch, args.precisions)
    for run in runs:
        write_json_atomic(RunPaths.of(args.results, args.ablation, run).benchmark,
                          per_run[run["run_id"]])
    write_json_atomic(args.json, doc)
    print(format_runs_table(doc))
    print(f"-> {args.json}")
    return 0


def run(args: argparse.Namespace) -> int:
    import pipelines.registry  # noqa: F401

    if args.runs:
        return run_ablation(args)
    if not args.config:
        raise UserError("give a CONFIG or --runs")
    cfg = load_config(args.config, args.cfg_options)
    configs = {"candidate": cfg}
    if args.baseline:
        configs["baseline"] = load_config(args.baseline, args.cfg_options)
    image_hw = input_shape(cfg, args.shape)
    doc = benchmark(configs, image_hw, args.device, args.repeats, args.warmup, args.batch,
                    args.precisions)
    print(format_table(doc))
    if args.json:
        write_json_atomic(args.json, doc)
        print(f"-> {args.json}")
    return 0

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
import contextlib
import copy
import os
import platform
import socket
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Sequence, Tuple

from pipelines.config import load_config, write_json_atomic
from pipelines.errors import UserError
from pipelines.stages.flops import build_model, inference_forward, input_shape

PARTS = ("pixel_decoder", "model")
#: what a timed call covers (the convention of MMSeg's tools/analysis_tools/benchmark.py and the
#: papers' FPS tables is the model's forward on a batch already on the device)
TIMED = ("model: backbone + pixel decoder + transformer decoder + mask upsampling to the input "
         "(decode_head.predict) on a random batch already on the device, eval mode, no_grad; "
         "pixel_decoder: the pixel decoder alone on precomputed backbone features. Not timed: "
         "data loading, resizing and normalisation (pre-processing), per-image argmax and "
         "resizing to the original image (post-processing)")
PRECISIONS = ("fp32", "fp16", "bf16")
AUTOCAST = {"fp16": "float16", "bf16": "bfloat16"}  # fp32: no autocast
DEFAULT_GPU_BATCH = 32
DEFAULT_GPU_PRECISIONS = ("fp32", "fp16")


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


# ----------------------------------------------------------------------------- pure helpers
def summarize(times_ms: List[float]) -> dict:
    """Median, p90, quartiles, IQR, mean, standard deviation, coefficient of variation (std /
    mean), min and count of a list of timings in ms (quantiles: the inclusive method, so a
    p90 of 10 timings lies between the 9th and 10th)."""
    if not times_ms:
        raise ValueError("no timings")
    if len(times_ms) >= 2:
        q1, q2, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
        p90 = statistics.quantiles(times_ms, n=10, method="inclusive")[8]
        std = statistics.stdev(times_ms)
    else:
        q1 = q2 = q3 = p90 = times_ms[0]
        std = 0.0
    mean = statistics.fmean(times_ms)
    return {"median_ms": statistics.median(times_ms), "p90_ms": p90, "q1_ms": q1, "q3_ms": q3,
            "iqr_ms": q3 - q1, "mean_ms": mean, "std_ms": std,
            "cv": std / mean if mean else 0.0, "min_ms": min(times_ms), "n": len(times_ms),
            "times_ms": list(times_ms)}


def paired_ratio(candidate_ms: List[float], baseline_ms: List[float]) -> float:
    """Median over rounds of candidate / baseline, each pair timed back to back in one round of
    :func:`interleaved`, so a load burst that hits a round hits both sides of its ratio."""
    return statistics.median(c / b for c, b in zip(candidate_ms, baseline_ms))


def deform_attn_backend(device: str) -> str:
    """Which implementation of mmcv's MultiScaleDeformableAttention runs on ``device``; on a GPU
    with a CPU-only mmcv build, switch mmcv to its PyTorch path (it would fail otherwise)."""
    if device == "cpu":
        return "pytorch (mmcv MultiScaleDeformableAttention CPU fallback: grid_sample per level)"
    import mmcv.ops.multi_scale_deform_attn as msda
    from mmcv.ops import get_compiling_cuda_version

    if get_compiling_cuda_version() not in ("not available", "", None):
        return f"mmcv CUDA kernel (mmcv compiled with CUDA {get_compiling_cuda_version()})"
    msda.IS_CUDA_AVAILABLE = False  # mmcv has no CUDA op: use its PyTorch path on the GPU
    return "pytorch (mmcv was built without CUDA: grid_sample fallback on the GPU)"


def make_timer(device: str) -> Callable[[Callable[[], object]], float]:
    import torch

    cuda = device == "cuda"
    if cuda:
        def timed_events(fn) -> float:
            """GPU time from before the first launch to after the last kernel, in ms."""
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return timed_events

    def timed(fn) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3

    return timed


def interleaved(calls: Dict[str, Callable[[], object]], repeats: int, warmup: int,
                timer: Callable) -> Dict[str, List[float]]:
    """Time every call ``repeats`` times, alternating the order each round; ``warmup`` untimed
    rounds first."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    out: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(timer(calls[name]))
    return out


# ----------------------------------------------------------------------------- measuring
def autocast_context(device: str, precision: str = "fp32"):
    """``torch.autocast`` for ``fp16`` / ``bf16`` on ``device``; a null context for fp32."""
    import torch

    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=getattr(torch, AUTOCAST[precision]))


def model_calls(model, image_hw: Tuple[int, int], device: str, batch: int = 1,
                precision: str = "fp32") -> Dict[str, Callable]:
    """``{'pixel_decoder': fn, 'model': fn}`` for a built model on ``device`` (inputs fixed:
    ``batch`` random images; the pixel decoder's input features computed once, under the same
    autocast as its calls)."""
    import torch

    model = model.to(device).eval()
    forward = inference_forward(model, image_hw)
    img = torch.randn(batch, 3, *image_hw, device=device)
    with torch.no_grad(), autocast_context(device, precision):
        feats = [f.detach() for f in model.extract_feat(img)]
    pixel_decoder = model.decode_head.pixel_decoder
    if precision == "fp32":
        return {"pixel_decoder": lambda: pixel_decoder(feats), "model": lambda: forward(img)}

    def in_autocast(fn):
        def call():
            with autocast_context(device, precision):
                return fn()
        return call

    return {"pixel_decoder": in_autocast(lambda: pixel_decoder(feats)),
            "model": in_autocast(lambda: forward(img))}


def measure_models(models: Dict[str, object], image_hw: Tuple[int, int], device: str = "cpu",
                   repeats: int = 20, warmup: int = 3, parts: Sequence[str] = PARTS,
                   batch: int = 1, precision: str = "fp32") -> dict:
    """Time ``parts`` of every built model (``{name: model}``), all calls interleaved in one
    loop; returns ``{name: {part: summary}}`` (see :func:`summarize`)."""
    import torch

    calls = {}
    for name, model in models.items():
        for part, fn in model_calls(model, image_hw, device, batch, precision).items():
            if part in parts:
                calls[f"{name}/{part}"] = fn
    with torch.no_grad():
        times = interleaved(calls, repeats, warmup, make_timer(device))
    return {name: {part: summarize(times[f"{name}/{part}"]) for part in parts}
            for name in models}


def setting_key(precision: str, batch: int) -> str:
    """``fp16_b32``: the key of one GPU setting."""
    return f"{precision}_b{batch}"


def peak_memory(model, image_hw: Tuple[int, int], device: str, batch: int,
                precision: str) -> dict:
    """``{'peak_mem_mb', 'weights_mb'}`` of one whole-model call (CUDA only; None on the CPU):
    ``max_memory_allocated`` after a reset, minus what was allocated before the call."""
    import torch

    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
    if device != "cuda":
        return {"peak_mem_mb": None, "weights_mb": weights}
    fn = model_calls(model, image_hw, device, batch, precision)["model"]
    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    return {"peak_mem_mb": peak / 2 ** 20, "weights_mb": weights}


def gpu_settings(device: str, batch: int | None, precisions: Sequence[str] | None
                 ) -> List[Tuple[str, int]]:
    """``[(precision, batch), ...]`` to time besides the batch-1 fp32 default: on cuda
    defaults to batch 1 and 32 in fp32 and fp16; on cpu nothing unless asked for."""
    if batch is not None and batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    if device != "cuda" and batch is None and not precisions:
        return []
    batch = batch if batch is not None else (DEFAULT_GPU_BATCH if device == "cuda" else 1)
    precisions = list(precisions or (DEFAULT_GPU_PRECISIONS if device == "cuda" else ["fp32"]))
    for p in precisions:
        if p not in PRECISIONS:
            raise UserError(f"precision must be one of {PRECISIONS}, got {p!r}")
    batches = sorted({1, batch})
    return [(p, b) for p in precisions for b in batches]


def measure_settings(models: Dict[str, object], image_hw: Tuple[int, int], device: str,
                     settings: Sequence[Tuple[str, int]], repeats: int, warmup: int) -> dict:
    """``{name: {setting_key: {part: summary, 'peak_mem_mb', 'weights_mb', 'batch',
    'precision', 'images_per_s'}}}``: every setting timed with the models interleaved."""
    out: Dict[str, dict] = {name: {} for name in models}
    for precision, batch in settings:
        timings = measure_models(models, image_hw, device, repeats, warmup, PARTS, batch,
                                 precision)
        for name, model in models.items():
            entry = {"batch": batch, "precision": precision, **timings[name],
                     **peak_memory(model, image_hw, device, batch, precision)}
            entry["images_per_s"] = 1e3 * batch / entry["model"]["median_ms"]
            out[name][setting_key(precision, batch)] = entry
    return out


def settings_ratios(candidate: dict, baseline: dict) -> dict:
    """``{setting: {part: paired median ratio candidate / baseline}}``."""
    return {key: {part: paired_ratio(entry[part]["times_ms"], baseline[key][part]["times_ms"])
                  for part in PARTS}
            for key, entry in candidate.items() if key in baseline}


def check_device(device: str, repeats: int, warmup: int) -> str:
    """Refuse impossible settings in one line; returns the deformable-attention backend."""
    import torch

    if repeats < 1 or warmup < 0:
        raise UserError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats}, {warmup}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device")
    return deform_attn_backend(device)


def benchmark(configs: Dict[str, object], image_hw: Tuple[int, int], device: str = "cpu",
              repeats: int = 20, warmup: int = 3, batch: int | None = None,
              precisions: Sequence[str] | None = None) -> dict:
    """Measure ``{'candidate': cfg[, 'baseline': cfg]}`` side by side; the JSON document."""
    import torch

    from pipelines.stages.flops import describe_pixel_decoder

    backend = check_device(device, repeats, warmup)
    settings = gpu_settings(device, batch, precisions)
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
def host_info(device: str) -> dict:
    """Where a measurement ran: host, CPU (model, instruction sets, the ATen capability it
    dispatched to), GPU model, driver, CUDA and cuDNN, threads, library versions."""
    import torch

    from pipelines.tracking.provenance import cpu_state, library_versions

    cpu = cpu_state()
    info = {"host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu["model"],
            "cpu_flags": cpu["flags"], "aten_capability": cpu["aten_capability"],
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "versions": library_versions(), "gpu": None, "cuda": None, "cudnn": None,
            "driver": None}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["driver"] = gpu_driver()
    for key in ("SLURM_JOB_ID", "SLURMD_NODENAME", "CUDA_VISIBLE_DEVICES"):
        if os.environ.get(key):
            info[key.lower()] = os.environ[key]
    return info


def gpu_driver() -> str | None:
    """The NVIDIA driver's version (``nvidia-smi``), None where it cannot be read."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() \
        else None


def stack_line(host: dict) -> str:
    """One line naming the device and software stack of a measurement."""
    versions = host.get("versions") or {}
    where = (f"{host['gpu']}, driver {host.get('driver') or '?'}, CUDA {host.get('cuda')}, "
             f"cuDNN {host.get('cudnn')}" if host.get("gpu") else
             f"{host.get('cpu')} (ATen {host.get('aten_capability') or '?'}, "
             f"{host.get('torch_threads')} threads)")
    libs = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k != "torch")
    return f"{where}; torch {host.get('torch') or versions.get('torch')}, {libs}"


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
    from pipelines.stages.failures import failure_record
    from pipelines.stages.flops import describe_pixel_decoder
    from pipelines.methods import not_timed_reason

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
    from pipelines.stages.disk import read_run_files
    from pipelines.grid import RunPaths

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

"""How the benchmark times a model, and on what: the paired, interleaved latency measurement.

Each measured call is timed on its own (``torch.cuda.synchronize`` before and after on CUDA, or
CUDA events after the warm-up in the GPU settings); the calls of all models are interleaved in
one loop (A B, then B A, ...), so a change in machine load hits them alike (:func:`interleaved`,
:func:`measure_models`, :func:`measure_settings`); the times are summarised as median, spread
and ratios (:func:`summarize`, :func:`paired_ratio`); :func:`host_info` names the host, CPU,
GPU, driver, torch threads and library versions the numbers were measured with.
:mod:`pipelines.stages.benchmark` is the command.
"""
from __future__ import annotations

import contextlib
import os
import platform
import socket
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Sequence, Tuple

from pipelines.errors import UserError
from pipelines.stages.flops import inference_forward

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



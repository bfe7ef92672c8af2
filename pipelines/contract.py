"""The naming contract: every tag, param, metric and artifact name, defined once.

The stages write their JSON under these names, ``ingest`` passes them to MLflow unchanged and
the analysis reads them back; nothing else spells them. Tests hold the names to what the real
producers write (``tests/unit/test_tracking.py``: a real ingest's params, metrics and tags).

MLflow layout of one ablation (experiment = ablation name, kind "model training"):

* one parent run named after the ablation, tag ``pipelines.role=parent``;
* one child run per grid run and recipe, named by its run id, tags ``pipelines.role=run``,
  ``pipelines.run_id``, ``pipelines.recipe``, ``pipelines.ablation``, ``pipelines.axes`` and
  ``mlflow.parentRunId``; a child whose recipe was replaced keeps its history under
  ``pipelines.role=superseded`` (the analysis reads ``run`` and ``trial`` only);
* params: :data:`FIXED_PARAMS` plus every axis under its own name (``schedule``, ``seed``,
  ``model.decode_head.num_queries``...);
* metrics: the final numbers (:data:`METRICS`, ``iou.<class>``) and the training curves from
  mmengine's scalar log, one point per logged iteration, under ``train/<name>`` and
  ``val/<name>`` (MLflow's UI groups them by that prefix).
"""
from __future__ import annotations

# ----------------------------------------------------------------------------- tags
ROLE_TAG = "pipelines.role"
RUN_ID_TAG = "pipelines.run_id"
RECIPE_TAG = "pipelines.recipe"
ABLATION_TAG = "pipelines.ablation"
AXES_TAG = "pipelines.axes"            # JSON list of the run's axis names (its param names)
METHODS_TAG = "pipelines.methods"      # comma-separated methods the config builds
BASELINE_TAG = "pipelines.baseline"    # "true" on the runs of the ablation's baseline variant
INGEST_HASH_TAG = "pipelines.ingest_hash"  # fingerprint of the files an ingest read
FAILURE_TAG = "pipelines.failure"      # why a run failed (status FAILED)
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own name: the UI shows it
GIT_DIRTY_TAG = "pipelines.git_dirty"
VERSION_TAG_PREFIX = "pipelines.version."     # + torch, mmcv, mmengine, mmseg, mmdet
#: the CPU a training ran on (``provenance["cpu"]``): same-seed CPU trainings are bit-exact on one
#: CPU class only, so every result names its CPU model, the ATen level it dispatched to, the
#: instruction sets and the threads
CPU_MODEL_TAG = "pipelines.cpu.model"
CPU_ATEN_TAG = "pipelines.cpu.aten_capability"
CPU_FLAGS_TAG = "pipelines.cpu.flags"
CPU_THREADS_TAG = "pipelines.cpu.threads"
CPU_ENV_TAG = "pipelines.cpu.env"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3's UI: open on the runs table
SEARCH_TAG = "pipelines.search"        # the search (study) a trial run or search parent is of
TRIAL_NUMBER_TAG = "pipelines.trial_number"  # comma-separated Optuna trial numbers of a run

ROLE_PARENT, ROLE_RUN, ROLE_TRIAL, ROLE_SUPERSEDED = "parent", "run", "trial", "superseded"
ROLE_SEARCH = "search"                 # a search's own parent run (its trials sit under it)
POINT_ROLES = (ROLE_RUN, ROLE_TRIAL)   # runs that are data points
# ingest writes a child as `pending` (no reader takes it), and in one last write turns it into
# its role and sets COMPLETE_TAG; only then is the child it replaces retired (pipelines/tracking.py)
ROLE_PENDING = "pending"
COMPLETE_TAG = "pipelines.complete"    # "true": every param, metric and artifact was written

# ----------------------------------------------------------------------------- params
#: params every child run has; every axis is a param too, under its axis name
FIXED_PARAMS = ("variant", "config", "max_iters", "recipe")
SEED = "seed"

# ----------------------------------------------------------------------------- metrics
MIOU, AACC, MACC = "miou", "aacc", "macc"
IOU_PREFIX = "iou."                    # + class name: per-class IoU (percent)
#: the parts every model has; a method adds its own (its declaration's ``parts``,
#: :mod:`pipelines.methods`: AiluRus' ``cluster``), so :data:`GFLOPS_PARTS` (these, each method
#: part after the part it lies in, then ``total``), :data:`GFLOPS` (``gflops_<part>``) and
#: :data:`METRICS` are read from the method registry when first asked for (``__getattr__``)
BASE_GFLOPS_PARTS = ("backbone", "encoder", "pixel_decoder", "transformer_decoder")
TOTAL_PART = "total"
GFLOPS_STAGE_PREFIX = "gflops_encoder_"  # + stage<k>: traced encoder GFLOPs per stage
LATENCY_MS, LATENCY_MS_PIXEL_DECODER = "latency_ms", "latency_ms_pixel_decoder"
# the benchmark's settings (batch 1 and a throughput batch, fp32 / fp16 / bf16), by
# ``.format(device=..., precision=..., batch=..., metric=...)``, e.g. cuda_fp16_b32_latency_ms;
# metric one of SETTING_METRICS (peak_mem_mb: the forward's peak above what was allocated
# before it, torch.cuda.max_memory_allocated; CUDA only)
SETTING_METRIC = "{device}_{precision}_b{batch}_{metric}"
SETTING_METRICS = ("latency_ms", "latency_ms_pixel_decoder", "images_per_s", "peak_mem_mb",
                   "latency_ratio", "latency_ratio_pixel_decoder")
PRECISIONS = ("fp32", "fp16", "bf16")
TRAIN_TIME_S = "train_time_s"
MEAN_EXIT = "mean_exit"                # ECO-M2F: mean encoder exit layer over the images
# ECO-M2F's gated run also logs every fixed exit k (the ladder) and the oracle gate, by
# ``.format(exit=k, metric=name)`` with name one of MIOU, AACC, MACC, the GFLOPS, MEAN_EXIT
LADDER_METRIC = "ladder.exit{exit}.{metric}"
ORACLE_METRIC = "oracle.{metric}"
TRIAL_NUMBER = "trial_number"          # Optuna search trials
#: a search trial's GFLOPs budget: the hypervolume's reference point, fixed before any run
SEARCH_GFLOPS_BUDGET = "search_gflops_budget"
CURVE_PREFIXES = ("train/", "val/")    # training curves, one point per logged iteration

# ----------------------------------------------------------------------------- artifacts
CONFIG_ARTIFACT = "config.py"          # the run's rendered config, which its stages read
EXIT_HISTOGRAM_ARTIFACT = "exit_histogram.json"
PROVENANCE_LIBRARIES = ("torch", "mmcv", "mmengine", "mmseg", "mmdet")


# ----------------------------------------------------------------------------- from the methods
def _gflops_parts() -> tuple:
    from pipelines.methods import gflops_parts

    return gflops_parts(BASE_GFLOPS_PARTS, TOTAL_PART)


def __getattr__(name: str):
    """``GFLOPS_PARTS``, ``GFLOPS`` and ``METRICS``: they name the methods' own parts, read from
    the method registry on first use (so importing this module stays free)."""
    if name == "GFLOPS_PARTS":
        value = _gflops_parts()
    elif name == "GFLOPS":
        value = tuple(f"gflops_{p}" for p in _gflops_parts())
    elif name == "METRICS":
        value = (MIOU, AACC, MACC, *__getattr__("GFLOPS"), LATENCY_MS, LATENCY_MS_PIXEL_DECODER,
                 TRAIN_TIME_S, MEAN_EXIT, TRIAL_NUMBER)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value

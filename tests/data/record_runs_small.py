"""Record ``runs_small.csv``: log a handful of runs under the ingestion's naming contract into a
throw-away SQLite MLflow store, then read them back with ``pipelines.analysis.data.load_runs``.

The numbers are hand-made (plausible magnitudes for the 128x128 synthetic demo), not measured:
they exercise every figure (baseline, PRO-SCALE schedules, ECO-M2F betas with exit histograms,
AiluRus cluster fractions, ATS, a few Optuna trials). Re-record with
``.venv/bin/python tests/data/record_runs_small.py`` (writes next to this file).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

CLASSES = ("background", "disc", "square")

# (run id, params, metrics, exit histogram or None); GFLOPs split = backbone + pixel decoder
# (encoder inside it) + transformer decoder
RUNS = [
    ("baseline-s0", dict(variant="baseline", schedule="", trc="false", lpe="false", seed=0),
     dict(miou=61.0, gflops_encoder=2.40, gflops_pixel_decoder=3.10, latency_ms=41.0), None),
    ("baseline-s1", dict(variant="baseline", schedule="", trc="false", lpe="false", seed=1),
     dict(miou=60.2, gflops_encoder=2.40, gflops_pixel_decoder=3.10, latency_ms=40.6), None),
    ("pro_scale-0-0-6", dict(variant="pro_scale", schedule="0-0-6", trc="false", lpe="false",
                             seed=0),
     dict(miou=60.8, gflops_encoder=2.40, gflops_pixel_decoder=3.10, latency_ms=41.3), None),
    ("pro_scale-3-3-3", dict(variant="pro_scale", schedule="3-3-3", trc="false", lpe="false",
                             seed=0),
     dict(miou=59.7, gflops_encoder=1.21, gflops_pixel_decoder=1.91, latency_ms=33.9), None),
    ("pro_scale-3-3-3-trc", dict(variant="pro_scale", schedule="3-3-3", trc="true", lpe="false",
                                 seed=0),
     dict(miou=60.3, gflops_encoder=1.22, gflops_pixel_decoder=1.92, latency_ms=35.2), None),
    ("pro_scale-3-3-3-trc-lpe", dict(variant="pro_scale", schedule="3-3-3", trc="true",
                                     lpe="true", seed=0),
     dict(miou=59.9, gflops_encoder=1.22, gflops_pixel_decoder=1.60, latency_ms=33.0), None),
    ("pro_scale-2-2-2", dict(variant="pro_scale", schedule="2-2-2", trc="false", lpe="false",
                             seed=0),
     dict(miou=58.1, gflops_encoder=0.81, gflops_pixel_decoder=1.51, latency_ms=31.8), None),
    ("pro_scale-4-4-4", dict(variant="pro_scale", schedule="4-4-4", trc="false", lpe="false",
                             seed=0),
     dict(miou=60.5, gflops_encoder=1.62, gflops_pixel_decoder=2.32, latency_ms=37.0), None),
    ("eco_m2f-b0.0005", dict(variant="eco_m2f", beta="0.0005", seed=0),
     dict(miou=60.6, gflops_encoder=2.01, gflops_pixel_decoder=2.71, latency_ms=39.5,
          mean_exit=5.0), {2: 1, 3: 2, 4: 4, 5: 9, 6: 16}),
    ("eco_m2f-b0.005", dict(variant="eco_m2f", beta="0.005", seed=0),
     dict(miou=59.8, gflops_encoder=1.52, gflops_pixel_decoder=2.22, latency_ms=36.1,
          mean_exit=3.8), {2: 5, 3: 9, 4: 8, 5: 6, 6: 4}),
    ("eco_m2f-b0.02", dict(variant="eco_m2f", beta="0.02", seed=0),
     dict(miou=57.9, gflops_encoder=0.96, gflops_pixel_decoder=1.66, latency_ms=33.4,
          mean_exit=2.4), {2: 22, 3: 7, 4: 2, 5: 1, 6: 0}),
    ("ailurus-cf1.0", dict(variant="ailurus", anchors="1.0", seed=0),
     dict(miou=55.0, gflops_backbone=9.0, gflops_encoder=2.40, gflops_pixel_decoder=3.10,
          latency_ms=58.0), None),
    ("ailurus-cf0.5", dict(variant="ailurus", anchors="0.5", seed=0),
     dict(miou=54.6, gflops_backbone=6.1, gflops_encoder=2.40, gflops_pixel_decoder=3.10,
          latency_ms=51.0), None),
    ("ailurus-cf0.25", dict(variant="ailurus", anchors="0.25", seed=0),
     dict(miou=53.2, gflops_backbone=4.6, gflops_encoder=2.40, gflops_pixel_decoder=3.10,
          latency_ms=49.5), None),
    ("ats-s0", dict(variant="ats", seed=0),
     dict(miou=53.9, gflops_backbone=5.2, gflops_encoder=2.40, gflops_pixel_decoder=3.10,
          latency_ms=55.0), None),
]
# Optuna trials (role=trial): (trial number, schedule, miou, encoder GFLOPs)
TRIALS = [(0, "1-2-3", 57.5, 1.10), (1, "3-3-3", 59.6, 1.21), (2, "0-3-3", 58.9, 1.05),
          (3, "2-3-4", 60.1, 1.45), (4, "1-1-4", 58.0, 1.30), (5, "3-2-1", 56.0, 0.70)]


def _complete(metrics: dict) -> dict:
    m = dict(metrics)
    m.setdefault("gflops_backbone", 4.0)
    m.setdefault("gflops_transformer_decoder", 1.5)
    m["gflops_total"] = round(m["gflops_backbone"] + m["gflops_pixel_decoder"]
                              + m["gflops_transformer_decoder"], 4)
    m.setdefault("latency_ms_pixel_decoder", round(m["latency_ms"] * 0.4, 2))
    m.setdefault("aacc", round(m["miou"] + 25.0, 2))
    m.setdefault("macc", round(m["miou"] + 8.0, 2))
    m.setdefault("train_time_s", 120.0)
    for i, name in enumerate(CLASSES):
        m[f"iou.{name}"] = round(m["miou"] + (i - 1) * 4.0, 2)
    return m


def log_runs(tracking_uri: str, ablation: str = "demo", artifact_location: str | None = None) -> None:
    """Log RUNS and TRIALS the way the ingestion does (experiment = ablation, one parent)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    # an explicit artifact folder: MLflow's default is ./mlruns in whatever the cwd is
    exp_id = client.create_experiment(ablation, artifact_location=artifact_location)
    parent = client.create_run(exp_id, run_name=ablation,
                               tags={"pipelines.role": "parent", "pipelines.ablation": ablation})
    defaults = dict(schedule="", trc="false", lpe="false", anchors="", beta="",
                    config="configs/models/mask2former_r18_synthetic-128x128.py", max_iters=200)
    entries = [(rid, p, m, h, "run") for rid, p, m, h in RUNS]
    for number, schedule, miou, enc in TRIALS:
        pd_gflops = round(enc + 0.7, 3)
        entries.append((f"trial-{number:03d}", dict(variant="pro_scale", schedule=schedule, seed=0),
                        dict(miou=miou, gflops_encoder=enc, gflops_pixel_decoder=pd_gflops,
                             latency_ms=round(30 + 4 * enc, 2), trial_number=number),
                        None, "trial"))
    for run_id, params, metrics, hist, role in entries:
        run = client.create_run(exp_id, run_name=run_id, tags={
            "pipelines.role": role, "pipelines.run_id": run_id, "pipelines.ablation": ablation,
            "mlflow.parentRunId": parent.info.run_id,
            "pipelines.axes": json.dumps([k for k in params if k != "variant"])})
        rid = run.info.run_id
        for key, value in {**defaults, **params}.items():
            client.log_param(rid, key, value)
        for key, value in _complete(metrics).items():
            client.log_metric(rid, key, value)
        if hist is not None:
            client.log_dict(rid, {str(k): v for k, v in hist.items()}, "exit_histogram.json")
        client.set_terminated(rid)
    client.set_terminated(parent.info.run_id)
    del mlflow


def main() -> None:
    from pipelines.analysis.data import load_runs, write_runs_csv

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        log_runs(uri, artifact_location=str(Path(tmp) / "artifacts"))
        df = load_runs(uri, "demo")
    # MLflow ids are random per store: replace them by stable ones so the file is reproducible
    df["mlflow_run_id"] = [f"{i:032x}" for i in range(1, len(df) + 1)]
    df["experiment_id"] = "1"
    print(json.dumps({"rows": len(df)}))
    write_runs_csv(df, HERE / "runs_small.csv")


if __name__ == "__main__":
    main()

"""Latency benchmark: statistics, interleaving, and the structure of its output (not timings)."""
from __future__ import annotations

import json

import pytest

import pipelines.registry  # noqa: F401
from pipelines.stages.timing import interleaved, summarize
from tests.conftest import REPO, TINY_CONFIG, run_cli

PROSCALE_TINY = REPO / "configs/models/mask2former_r18_proscale-333_synthetic-128x128.py"


def test_summarize_quartiles():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["median_ms"] == 3.0
    assert (s["q1_ms"], s["q3_ms"], s["iqr_ms"]) == (2.0, 4.0, 2.0)
    assert s["min_ms"] == 1.0 and s["n"] == 5
    assert summarize([7.0])["iqr_ms"] == 0.0
    with pytest.raises(ValueError):
        summarize([])


def test_interleaved_alternates_order_and_skips_warmup():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    ticks = iter(range(100))

    def timer(fn):
        fn()
        return float(next(ticks))

    times = interleaved(calls, repeats=3, warmup=1, timer=timer)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then A B, B A, A B
    assert times == {"a": [0.0, 3.0, 4.0], "b": [1.0, 2.0, 5.0]}


def test_benchmark_document_structure():
    from pipelines.config import load_config
    from pipelines.stages.benchmark import benchmark, format_table

    doc = benchmark({"candidate": load_config(PROSCALE_TINY), "baseline": load_config(TINY_CONFIG)},
                    (64, 64), "cpu", repeats=2, warmup=0)
    assert doc["device"] == "cpu" and doc["shape"] == [64, 64] and doc["repeats"] == 2
    assert "pytorch" in doc["deform_attn_backend"] and "CPU fallback" in doc["deform_attn_backend"]
    for name in ("candidate", "baseline"):
        res = doc["results"][name]
        for part in ("pixel_decoder", "model"):
            s = res[part]
            assert s["n"] == 2 and s["median_ms"] > 0 and s["q1_ms"] <= s["median_ms"] <= s["q3_ms"]
    assert "ProScalePixelDecoder(schedule=(3, 3, 3), trc=True, lpe=True)" == \
        doc["results"]["candidate"]["pixel_decoder_type"]
    for part in ("pixel_decoder", "model"):
        ratio = doc["results"]["candidate"][part]["median_ms"] / \
            doc["results"]["baseline"][part]["median_ms"]
        assert doc["ratios"][part] == pytest.approx(ratio)
        assert doc["latency_reduction"][part] == pytest.approx(1 - ratio)
    table = format_table(doc)
    assert "ratio candidate/baseline pixel_decoder" in table and "grid_sample" in table


@pytest.mark.slow  # two model builds + timing in a fresh interpreter: ~20 s idle, ~50 s loaded
def test_cli_benchmark_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("benchmark", str(PROSCALE_TINY), "--shape", "64", "64", "--repeats", "2",
                   "--warmup", "0", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"candidate"} and "ratios" not in doc
    assert "CPU fallback" in proc.stdout


@pytest.mark.parametrize("args, words", [
    (["--shape", "100", "64"], "multiple of 32"),
    (["--repeats", "0"], "--repeats"),
    (["--baseline", "configs/models/missing.py"], "config file not found"),
    (["--cfg-options", "model.decode_head.pixel_decoder.schedule=(0,0,0)"], "schedule"),
])
def test_cli_benchmark_bad_input_is_one_line(args, words):
    proc = run_cli("benchmark", str(PROSCALE_TINY), *args)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and words in lines[0]


def test_cli_benchmark_cuda_without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = run_cli("benchmark", str(TINY_CONFIG), "--device", "cuda", "--shape", "64", "64")
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


def test_paired_runs_of_an_ablation_in_one_process(tmp_path):
    """Every run's model interleaved in one loop, host and versions named, each run's own
    document with ratios to the baseline run; a run whose model does not build is recorded
    as failed without stopping the others."""
    from pipelines.stages.benchmark import benchmark_runs, format_runs_table

    broken = tmp_path / "broken.py"  # a run whose config does not build
    broken.write_text(f"_base_ = [{str(TINY_CONFIG)!r}]\nmodel = dict(decode_head=dict("
                      f"type='NoSuchHead'))\n")
    runs = [{"run_id": "baseline-seed0", "variant": "baseline", "config_file": str(TINY_CONFIG)},
            {"run_id": "pro_scale-seed0", "variant": "pro_scale",
             "config_file": str(PROSCALE_TINY)},
            {"run_id": "broken-seed0", "variant": "broken", "config_file": str(broken)}]
    doc, per_run = benchmark_runs(runs, (64, 64), "cpu", repeats=2, warmup=0)
    assert doc["paired"] and doc["baseline_run"] == "baseline-seed0"
    assert doc["order"] == ["baseline-seed0", "pro_scale-seed0"]
    assert doc["host"]["host"] and doc["host"]["cpu"] and doc["host"]["gpu"] is None
    assert doc["host"]["versions"]["mmcv"] == "2.1.0" and doc["torch_threads"] >= 1
    assert "NoSuchHead" in doc["failed"]["broken-seed0"]
    assert per_run["broken-seed0"]["status"] == "failed"
    own = per_run["pro_scale-seed0"]
    assert own["results"]["candidate"]["model"]["n"] == 2
    assert own["results"]["baseline"] == doc["results"]["baseline-seed0"]
    assert own["ratios"]["model"] > 0 and own["host"] == doc["host"]
    # ingest reads the run's latency from its own document, as before
    from pipelines.tracking.run_files import _number

    assert _number(own, "results.candidate.model.median_ms") == \
        doc["results"]["pro_scale-seed0"]["model"]["median_ms"]
    assert "broken-seed0" in format_runs_table(doc)


def test_gated_runs_are_not_timed_as_their_deepest_exit():
    """A gated ECO-M2F run (the grid's own run.json) gets no latency from the paired benchmark:
    its untrained model would run to the deepest exit, a latency the gated run never has."""
    from pipelines.grid import expand_grid, load_ablation, validate_ablation
    from pipelines.grid.run import run_document
    from pipelines.stages.benchmark import benchmark_runs, format_runs_table
    from pipelines.tracking.run_files import _number

    ablation = validate_ablation(load_ablation(str(REPO / "configs/ablations/eco_m2f_demo.yaml")))
    gated = [run_document(r, "results", "eco") for r in expand_grid(ablation, repo=REPO)]
    assert len(gated) == 4  # plain and PRO-SCALE-composed ECO-M2F, two betas each
    runs = [{"run_id": "baseline-seed0", "variant": "baseline",
             "config_file": str(TINY_CONFIG)}, *gated]
    doc, per_run = benchmark_runs(runs, (64, 64), "cpu", repeats=1, warmup=0)
    assert doc["order"] == ["baseline-seed0"]
    assert doc["not_timed"] == sorted(r["run_id"] for r in gated)
    for run in gated:
        own = per_run[run["run_id"]]
        assert "gate" in own["not_timed"] and own.get("status") != "failed"
        assert _number(own, "results.candidate.model.median_ms") is None  # ingest logs none
    assert "not timed" in format_runs_table(doc)
    only, _ = benchmark_runs(gated, (64, 64), "cpu", repeats=1, warmup=0)
    assert only["results"] == {} and "no run timed" in format_runs_table(only)


def test_settings_batch_and_precision_on_the_cpu_dry_path():
    """The GPU settings path run on the CPU: batch 1 and a throughput batch under
    bf16 autocast (the deformable sampling included), figures per setting, ingest's names."""
    from pipelines.config import load_config
    from pipelines.stages.benchmark import benchmark, format_table
    from pipelines.stages.timing import gpu_settings
    from pipelines.tracking.run_files import _setting_metrics

    assert gpu_settings("cpu", None, None) == []  # today's CPU behaviour: no settings
    assert gpu_settings("cuda", None, None) == [("fp32", 1), ("fp32", 32), ("fp16", 1),
                                                ("fp16", 32)]
    doc = benchmark({"candidate": load_config(PROSCALE_TINY)}, (64, 64), "cpu", repeats=1,
                    warmup=0, batch=2, precisions=["bf16"])
    assert doc["settings"] == ["bf16_b1", "bf16_b2"]
    entry = doc["results"]["candidate"]["settings"]["bf16_b2"]
    assert entry["batch"] == 2 and entry["precision"] == "bf16"
    assert entry["model"]["n"] == 1 and entry["pixel_decoder"]["median_ms"] > 0
    assert entry["peak_mem_mb"] is None and entry["weights_mb"] > 0  # memory: CUDA only
    assert entry["images_per_s"] == pytest.approx(2e3 / entry["model"]["median_ms"])
    assert "bf16_b2" in format_table(doc)
    metrics = _setting_metrics(doc)
    assert metrics["cpu_bf16_b2_latency_ms"] == entry["model"]["median_ms"]
    assert "cpu_bf16_b2_peak_mem_mb" not in metrics


def test_settings_ratios_are_paired_and_logged():
    from pipelines.stages.timing import settings_ratios
    from pipelines.tracking.run_files import _setting_metrics

    def entry(ms):
        return {"batch": 32, "precision": "fp16", "images_per_s": 32e3 / ms[0],
                "peak_mem_mb": 100.0, "model": {"median_ms": ms[0], "times_ms": ms},
                "pixel_decoder": {"median_ms": ms[0] / 2, "times_ms": [m / 2 for m in ms]}}

    cand, base = {"fp16_b32": entry([8.0, 9.0, 10.0])}, {"fp16_b32": entry([10.0, 10.0, 10.0])}
    ratios = settings_ratios(cand, base)
    assert ratios == {"fp16_b32": {"pixel_decoder": 0.9, "model": 0.9}}
    doc = {"device": "cuda", "results": {"candidate": {"settings": cand}},
           "settings_ratios": ratios}
    m = _setting_metrics(doc)
    assert m["cuda_fp16_b32_latency_ratio"] == 0.9 and m["cuda_fp16_b32_peak_mem_mb"] == 100.0
    from pipelines.contract import SETTING_METRIC, SETTING_METRICS

    assert set(m) == {SETTING_METRIC.format(device="cuda", precision="fp16", batch=32, metric=k)
                      for k in SETTING_METRICS}


@pytest.mark.slow  # two tiny models, 3 settings, on the CPU: ~1-3 min on a loaded 2-core machine
def test_gpu_table_dry_run(tmp_path):
    """The one-call GPU table script, its CPU dry path (tiny configs, 64x64, batch 2)."""
    from pipelines.benchmarks.gpu_table import main

    assert main(["--dry-run", "--only", "pro_scale_r50", "--precisions", "bf16",
                 "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "gpu_table.json").read_text())
    assert doc["dry_run"] and set(doc["comparisons"]) == {"pro_scale_r50"}
    table = (tmp_path / "gpu_table.md").read_text()
    assert "| pro_scale_r50 | bf16_b1 |" in table and "| pro_scale_r50 | bf16_b2 |" in table

"""Provenance records the CPU a result was computed on: model, instruction-set flags, the ATen
level really used, threads and the environment variables that change CPU kernels."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from pipelines.benchmarks import capability_spread
from pipelines.tracking import provenance

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni amx_tile amx_bf16
processor\t: 1
model name\t: should not be read
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm sve
CPU implementer\t: 0x41
"""


def test_cpuinfo_model_and_flags_of_x86(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(X86)
    model, flags = provenance._cpuinfo(path)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert flags == ["sse4_2", "avx", "fma", "avx2", "avx512f", "avx512_vnni", "amx_tile",
                     "amx_bf16"]


def test_cpuinfo_of_arm_and_missing_file(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ARM)
    assert provenance._cpuinfo(path) == (None, ["asimd", "sve"])
    assert provenance._cpuinfo(tmp_path / "absent") == (None, None)


def test_cpu_state_records_kernel_env_and_falls_back_to_platform(tmp_path, monkeypatch):
    for name in provenance.CPU_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("UNRELATED", "x")
    state = provenance.cpu_state(tmp_path / "absent")
    assert state["env"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert state["model"]  # platform.processor() or machine() when there is no cpuinfo
    assert state["flags"] is None
    assert isinstance(state["threads"], int) and state["threads"] >= 1
    json.dumps(state)


def test_collect_has_cpu_and_is_json():
    record = provenance.collect()
    assert set(record) == {"git", "versions", "cpu"}
    assert set(record["cpu"]) == {"model", "machine", "flags", "aten_capability", "threads",
                                  "env"}
    json.dumps(record)


def test_aten_capability_is_the_level_torch_really_used():
    """ATEN_CPU_CAPABILITY=default lowers ATen to DEFAULT on any x86 CPU; the record shows the
    level used and the variable that chose it."""
    code = ("import json, torch; from pipelines.tracking import provenance; "
            "print(json.dumps(provenance.cpu_state()))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=provenance.REPO)
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state["env"]["ATEN_CPU_CAPABILITY"] == "default"
    if state["machine"] in ("x86_64", "AMD64"):
        assert state["aten_capability"] == "DEFAULT"
    native = provenance.aten_capability()
    assert native is None or native.isupper()


def test_capability_spread_summary():
    """The benchmark's table: spread per recipe and seed over profiles, paired effect."""
    rows = [{"profile": p, "setting": s, "seed": seed, "miou": m, "aten_capability": p.upper()}
            for p, s, seed, m in [
                ("native", "baseline", 0, 70.0), ("native", "x", 0, 60.0),
                ("native", "baseline", 1, 71.0), ("native", "x", 1, 62.0),
                ("avx2", "baseline", 0, 72.0), ("avx2", "x", 0, 61.0),
                ("avx2", "baseline", 1, 70.5), ("avx2", "x", 1, 60.0)]]
    summary = capability_spread.summarise(rows, ["native", "avx2"], ["baseline", "x"], [0, 1])
    assert summary["spread"] == {"baseline/seed0": 2.0, "baseline/seed1": 0.5,
                                 "x/seed0": 1.0, "x/seed1": 2.0}
    assert summary["max_spread"] == 2.0
    assert summary["effects"]["native/x"]["diffs"] == [-10.0, -9.0]
    assert summary["effects"]["avx2/x"]["mean"] == -10.75
    text = capability_spread.markdown(rows, summary, ["native", "avx2"], ["baseline", "x"],
                                      [0, 1], "header")
    assert "| baseline | 0 | 70.00 | 72.00 | 2.00 |" in text
    assert "-9.50" in text  # native's mean paired effect


def test_capability_spread_of_one_class():
    rows = [{"profile": p, "setting": "baseline", "seed": 0, "miou": 70.0,
             "per_class_iou": {"small_blob": v}, "aten_capability": "X"}
            for p, v in [("native", 9.5), ("avx2", 6.0)]]
    summary = capability_spread.summarise(rows, ["native", "avx2"], ["baseline"], [0],
                                          "small_blob")
    assert summary["spread"] == {"baseline/seed0": 3.5}
    assert "mean small_blob" in capability_spread.markdown(
        rows, summary, ["native", "avx2"], ["baseline"], [0], "h", "small_blob")


def test_the_cpu_reaches_mlflow_tags():
    from pipelines import contract as c
    from pipelines.tracking.children import provenance_tags
    from pipelines.tracking.provenance import collect

    tags = provenance_tags(collect())
    assert tags[c.CPU_ATEN_TAG] and tags[c.CPU_MODEL_TAG] and int(tags[c.CPU_THREADS_TAG]) >= 1
    assert provenance_tags({"cpu": {"model": "X", "aten_capability": "AVX2", "threads": 1,
                                    "flags": ["avx2"], "env": {"ATEN_CPU_CAPABILITY": "avx2"}}}) \
        == {c.CPU_MODEL_TAG: "X", c.CPU_ATEN_TAG: "AVX2", c.CPU_THREADS_TAG: "1",
            c.CPU_FLAGS_TAG: "avx2", c.CPU_ENV_TAG: '{"ATEN_CPU_CAPABILITY": "avx2"}'}

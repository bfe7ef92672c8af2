"""ATS GFLOPs vs kept tokens on the paper's DeiT-S at 224x224 (pipelines/benchmarks/ats_flops.py)."""
from __future__ import annotations

import json

import pytest

from pipelines.benchmarks import ats_flops
from pipelines.stages.cost_model_vit import (
    DEIT_S,
    ats_classifier_flops,
    ats_kept_for_flops,
    backbone_flops,
)


def test_plain_deit_s_is_the_papers_4_6_gflops():
    plain = ats_classifier_flops(196)
    assert plain == backbone_flops((224, 224), DEIT_S)["backbone"] + 384 * 1000
    assert round(plain / 1e9, 1) == 4.6
    assert ats_classifier_flops(500) == plain  # K = N: a block cannot keep more than it gets


def test_flops_fall_with_the_kept_tokens_and_per_stage_counts_are_capped():
    costs = [ats_classifier_flops(k) for k in range(196, 0, -1)]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) == len(costs)
    # a later block cannot keep more than the earlier one left
    assert ats_classifier_flops([50] + [196] * 8) == ats_classifier_flops(50)
    with pytest.raises(ValueError, match="9 ATS blocks"):
        ats_classifier_flops([100, 100])


def test_token_count_for_the_papers_2_9_gflops():
    solved = ats_kept_for_flops(2.9e9)
    assert solved["below"][0] == 97 and solved["above"][0] == 98
    assert solved["below"][1] <= 2.9e9 <= solved["above"][1]
    assert 97 < solved["exact"] < 98
    with pytest.raises(ValueError, match="outside"):
        ats_kept_for_flops(5e9)


def test_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "ats.json"
    assert ats_flops.main(["--kept", "98", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "plain 4.608 GFLOPs" in text and "2.9 GFLOPs <=> 97.9 tokens" in text
    data = json.loads(out.read_text())
    assert data["kept"]["gflops"] == pytest.approx(2.902, abs=1e-3)
    assert ats_flops.main(["--target", "9"]) == 2

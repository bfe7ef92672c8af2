"""Search spaces: a bad space is refused in one line naming its key, before any trial."""
from __future__ import annotations

import copy

import pytest
import yaml

from pipelines.errors import UserError
from pipelines.search.space import load_search_space
from tests.conftest import REPO, run_cli

DEMO = REPO / "configs" / "search" / "demo.yaml"


def _space(tmp_path, edit) -> str:
    doc = yaml.safe_load(DEMO.read_text())
    doc["ablation"] = str(REPO / "configs" / "ablations" / "demo.yaml")
    doc.pop("warm_start", None)
    doc = copy.deepcopy(doc)
    edit(doc)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _pro(doc):
    return doc["space"]["variants"]["pro_scale"]


BAD = {
    "empty choice": (lambda d: _pro(d).update(schedule=[]), "space.variants.pro_scale.schedule",
                     "empty"),
    "low > high": (lambda d: _pro(d).update({"model.decode_head.num_queries":
                                             {"low": 30, "high": 10}}),
                   "space.variants.pro_scale.model.decode_head.num_queries", "low 30 > high 10"),
    "unknown variant": (lambda d: d["space"]["variants"].update(vit_huge={}),
                        "space.variants.vit_huge", "unknown variant"),
    "unknown key": (lambda d: _pro(d).update({"model.decode_head.no_such_key": [1, 2]}),
                    "space.variants.pro_scale", "no_such_key"),
    "unknown alias": (lambda d: _pro(d).update(shedule=["3-3-3"]), "space.variants.pro_scale",
                      "shedule"),
    "value the grid refuses": (lambda d: _pro(d).update(schedule=["3-3-3", "3-3"]),
                               "space.variants.pro_scale.schedule", "3-3"),
    "budget zero": (lambda d: d["budget"].update(gflops_total=0), "budget.gflops_total",
                    "positive"),
    "budget negative": (lambda d: d["budget"].update(gflops_total=-1.5), "budget.gflops_total",
                        "positive"),
    "trial budget zero": (lambda d: d["budget"].update(trials=0), "budget.trials", "positive"),
    "unknown top-level key": (lambda d: d.update(sampeler={}), "sampeler", "unknown key"),
    "unknown sampler": (lambda d: d.update(sampler={"name": "cmaes"}), "sampler.name", "cmaes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_space_is_refused_naming_the_key(tmp_path, case):
    edit, key, words = BAD[case]
    with pytest.raises(UserError) as err:
        load_search_space(_space(tmp_path, edit))
    message = str(err.value)
    assert "\n" not in message
    assert key in message and words in message, message


def test_good_space_resolves_every_choice():
    spec = load_search_space(DEMO)
    assert list(spec.variants) == ["baseline", "pro_scale"]
    names = [a.name for a in spec.variants["pro_scale"]]
    assert names == ["pro_scale.schedule", "pro_scale.trc", "pro_scale.lpe", "seed"]
    assert spec.gflops_budget == 2.0 and spec.sampler == "tpe"


def test_cli_refuses_before_any_trial(tmp_path):
    space = _space(tmp_path, lambda d: _pro(d).update(trc=[]))
    proc = run_cli("search", space, "--storage", f"sqlite:///{tmp_path / 'study.db'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "space.variants.pro_scale.trc" in lines[0], proc.stderr
    assert not (tmp_path / "study.db").exists()

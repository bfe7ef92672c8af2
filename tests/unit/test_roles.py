"""Roles come from data, not names: the baseline from the ablation (or the
variant whose config builds no method), a run's method from its recorded ``pipelines.methods``."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines.analysis.data import read_runs_csv
from pipelines.analysis.settings import analyse
from pipelines.errors import UserError
from pipelines.reports import figures

ROOT = Path(__file__).resolve().parents[2]
RUNS_CSV = ROOT / "tests" / "data" / "runs_small.csv"
#: canonical variant -> an arbitrary name (vit_demo's among them)
RENAME = {"baseline": "vit", "pro_scale": "cluster", "eco_m2f": "pd_cluster",
          "ailurus": "ats", "ats": "zz_budget"}


def _recorded(df: pd.DataFrame) -> pd.DataFrame:
    """The table as ingest records it now: methods and baseline per run (from the analysis of
    the canonical names, i.e. what the grid logs as pipelines.methods / pipelines.baseline)."""
    return analyse(df).runs.drop(columns=["setting", "series"])


def _renamed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["variant"] = out["variant"].map(lambda v: RENAME.get(v, v)).astype("string")
    out["run_id"] = [RENAME.get(v, v) + str(r)[len(v):] if str(r).startswith(v) else r
                     for v, r in zip(df["variant"], df["run_id"])]
    out["run_id"] = out["run_id"].astype("string")
    return out


@pytest.fixture(scope="module")
def tables():
    canonical = _recorded(read_runs_csv(RUNS_CSV))
    return canonical, _renamed(canonical)


def test_same_settings_and_verdicts_under_any_variant_names(tables):
    a, b = (analyse(t) for t in tables)
    assert list(b.series["series"]) == list(a.series["series"])
    assert "Mask2Former (baseline)" in set(b.settings["setting"])
    cols = ["setting", "series", "n_seeds", "miou", "gflops_total"]
    pd.testing.assert_frame_equal(a.settings[cols], b.settings[cols])
    pd.testing.assert_frame_equal(a.verdicts, b.verdicts)
    assert not b.verdicts["vs_baseline"].str.contains("no baseline run").any()
    pd.testing.assert_frame_equal(a.fronts[["front", "setting", "knee"]],
                                  b.fronts[["front", "setting", "knee"]])


def test_same_figures_under_any_variant_names(tables, tmp_path):
    a, b = (analyse(t) for t in tables)
    for name in figures.FIGURES:
        pngs = []
        for analysis in (a, b):
            fig = figures.draw(name, analysis)
            assert not isinstance(fig, figures.Skip), (name, fig)
            pngs.append(figures.png_bytes(fig))
        assert pngs[0] == pngs[1], name


def test_vit_demo_baseline_is_the_variant_without_a_method():
    from pipelines.grid import expand_grid

    ablation = yaml.safe_load((ROOT / "configs" / "ablations" / "vit_demo.yaml").read_text())
    runs = expand_grid(ablation, ROOT)
    assert {r.variant for r in runs if r.baseline} == {"vit"}
    assert all(r.to_dict()["baseline"] == (r.variant == "vit") for r in runs)
    ablation["grid"]["baseline"] = "ats"
    assert {r.variant for r in expand_grid(ablation, ROOT) if r.baseline} == {"ats"}
    ablation["grid"]["baseline"] = "nope"
    with pytest.raises(UserError, match="grid.baseline"):
        expand_grid(ablation, ROOT)


def test_vit_demo_names_get_distinct_styles(tables):
    runs = tables[0]
    vit = runs.assign(variant=runs["variant"].map(
        {"baseline": "vit", "ailurus": "cluster", "ats": "ats", "eco_m2f": "pd_cluster",
         "pro_scale": "pro"}).astype("string"))
    vit.loc[vit["variant"] == "pd_cluster", "methods"] = "cluster_pixel_decoder"
    vit = vit.assign(baseline=pd.array([pd.NA] * len(vit), dtype="boolean"))  # the default
    series = analyse(vit).series.set_index("variant")
    assert bool(series.loc["vit", "baseline"]) and series["baseline"].sum() == 1
    styles = list(zip(series["color"], series["marker"]))
    assert len(set(styles)) == len(styles)
    assert len({series.loc[v, "marker"] for v in ("vit", "cluster", "pd_cluster")}) == 3


def test_eco_m2f_with_pro_scale_is_in_both_eco_m2f_figures(tables):
    runs = tables[0].copy()
    eco = runs["variant"] == "eco_m2f"
    both = runs[eco].assign(variant="eco_m2f_proscale", methods="early_exit,pro_scale",
                            run_id=runs.loc[eco, "run_id"].str.replace("eco_m2f", "eco_pro"))
    a = analyse(pd.concat([runs, both], ignore_index=True))
    assert "PRO-SCALE + ECO-M2F" in set(a.series["series"])
    for name in ("eco_m2f_exits", "eco_m2f_tradeoff"):
        fig = figures.draw(name, a)
        texts = [t.get_text() for ax in fig.axes if ax.get_legend()
                 for t in ax.get_legend().get_texts()]
        assert any("PRO-SCALE + ECO-M2F" in t for t in texts), (name, texts)
    only = analyse(both.assign(variant="x"))
    assert not isinstance(figures.draw("eco_m2f_tradeoff", only), figures.Skip)

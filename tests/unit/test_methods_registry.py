"""The method registry (pipelines/methods.py): declarations read without importing their files
equal the imported ones, the four methods look and count exactly as before, and the registry's
rules (file's own name, literals only, no part of a recipe) hold."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines import axes as ax
from pipelines import methods
from tests.conftest import REPO

FIELDS = ("name", "label", "color", "marker", "rank", "parts", "figures", "report",
          "report_title", "cost_model", "finished_by", "not_timed", "axis_labels", "recorded_as")

#: what the analysis showed before the registry (roles.METHOD_STYLES and its order)
STYLES_BEFORE = {
    "pro_scale": ("PRO-SCALE", "#1f77b4", "s"),
    "early_exit": ("ECO-M2F", "#d62728", "^"),
    "token_cluster": ("AiluRus", "#2ca02c", "D"),
    "token_sample": ("ATS", "#9467bd", "v"),
    "cluster_pixel_decoder": ("PD clustering", "#ff7f0e", "X"),
}


def _fields(cls) -> dict:
    return {f: getattr(cls, f) for f in FIELDS}


def test_read_declarations_equal_the_imported_ones():
    read = {name: _fields(cls) for name, cls in methods.methods().items()}
    import pipelines.models  # noqa: F401  (every model file, for real: decorators run again)

    imported = {name: _fields(cls) for name, cls in methods.methods().items()}
    assert read == imported
    assert all(cls.__module__ == f"pipelines.models.{name}"
               for name, cls in methods.methods().items())
    # pkgutil discovery imported every file of the package
    assert {p.stem for p in ax.MODELS_DIR.glob("*.py") if p.stem != "__init__"} <= \
        {m.rsplit(".", 1)[-1] for m in sys.modules if m.startswith("pipelines.models.")}


def test_the_four_methods_look_and_count_as_before():
    from pipelines import contract
    from pipelines.analysis import roles
    from pipelines.reports import figures
    from pipelines.stages import flops

    assert {n: (m.label, m.color, m.marker) for n, m in methods.methods().items()} == \
        STYLES_BEFORE
    assert list(roles.method_order()) == list(STYLES_BEFORE)
    assert contract.GFLOPS_PARTS == ("backbone", "cluster", "encoder", "pixel_decoder",
                                     "transformer_decoder", "total")
    assert contract.GFLOPS == tuple(f"gflops_{p}" for p in contract.GFLOPS_PARTS)
    assert flops.parts() == {"backbone": "backbone",
                             "encoder": "decode_head.pixel_decoder.encoder",
                             "pixel_decoder": "decode_head.pixel_decoder",
                             "transformer_decoder": "decode_head.transformer_decoder",
                             "cluster": "backbone.clusterer"}
    assert list(figures.FIGURES) == ["accuracy_vs_gflops", "encoder_gflops_by_schedule",
                                     "eco_m2f_exits", "eco_m2f_tradeoff",
                                     "accuracy_vs_cluster_fraction", "latency_vs_gflops",
                                     "search_hypervolume"]
    assert roles.recorded_before_methods_tag() == {
        "baseline": (), "pro_scale": ("pro_scale",), "eco_m2f": ("early_exit",),
        "ailurus": ("token_cluster",), "ats": ("token_sample",)}
    row = {"axes": '["schedule", "trc", "beta", "anchors", "seed"]', "schedule": "3-3-3",
           "trc": True, "beta": 0.02, "anchors": 0.25, "seed": 0}
    # in the declared order (files, then each AXES)
    assert roles.run_label(row) == "β=0.02 3-3-3 TRC anchors=0.25"


def test_gated_runs_and_cost_models_come_from_declarations():
    gated = {"run_id": "g", "methods": ["pro_scale", "early_exit"], "stages": {"beta": "gate"}}
    assert methods.is_gated(gated)
    assert "gate picks" in methods.not_timed_reason(gated)
    assert not methods.is_gated({"methods": ["early_exit"], "stages": {}})
    assert not methods.is_gated({"methods": ["pro_scale"], "stages": {"beta": "gate"}})
    from pipelines.stages import cost_model

    assert methods.cost_model_of("mmdet.EarlyExitPixelDecoder") is \
        cost_model.early_exit_pixel_decoder_flops_from_cfg
    assert methods.cost_model_of("mmdet.ProScalePixelDecoder") is None
    assert methods.cost_model_of("mmdet.MSDeformAttnPixelDecoder") is None


def test_report_sections_come_from_the_methods_hooks(tmp_path):
    import json

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"ladder": {}, "exit_histogram": {"2": 1}, "beta": 0.0,
                                   "mean_exit": 2.0}))
    sections = methods.run_report_lines({"run_id": "r", "methods": ["early_exit"]}, metrics)
    assert list(sections) == ["early_exit"] and sections["early_exit"][0].startswith("### `r`")
    assert methods.run_report_lines({"run_id": "r", "methods": ["pro_scale"]}, metrics) == {}
    md = methods.report_markdown(sections)
    assert md[:3] == ["", "## ECO-M2F: exit histogram, ladder and oracle", ""]


def test_reading_the_registry_imports_no_torch():
    code = ("import sys; from pipelines import contract, methods; "
            "from pipelines.analysis import roles; from pipelines.reports import figures; "
            "assert contract.GFLOPS_PARTS and methods.methods() and figures.FIGURES; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


DECLARATION = '''
AXES = {"drop": Axis("model.x.drop", type="int", minimum=1)}


# ---- method declaration
from pipelines.methods import METHODS, Method  # noqa: E402


@METHODS.register_module(name="{name}")
class ToyMethod(Method):
    label = {label}
'''


def _registry(tmp_path, monkeypatch, name="toy", label='"Toy"'):
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / "toy.py").write_text("import torch\n" + DECLARATION.replace(
        "{name}", name).replace("{label}", label))
    monkeypatch.setattr(ax, "MODELS_DIR", models)
    return methods.MethodRegistry("method_test", scope="pipelines_test", locations=["x"])


def test_a_declaration_is_read_without_running_its_file(tmp_path, monkeypatch):
    reg = _registry(tmp_path, monkeypatch)
    reg.import_from_location()  # the file's `import torch` line is never run
    assert reg.get("toy").title() == "Toy" and reg.get("toy").name == "toy"


@pytest.mark.parametrize("name, label, words", [
    ("other", '"Toy"', "its file's name"),
    ("toy", "AXES", "literals only"),
])
def test_bad_declarations_say_what_is_wrong(tmp_path, monkeypatch, name, label, words):
    reg = _registry(tmp_path, monkeypatch, name, label)
    with pytest.raises(ValueError, match=words):
        reg.import_from_location()


def test_a_declaration_is_no_part_of_a_recipe(tmp_path):
    source = (REPO / "pipelines" / "models" / "token_sample.py").read_text()
    marker = source.index(" method declaration\n")
    head = source[:source.rindex("\n\n\n", 0, marker)] + "\n"
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(source)
    b.write_text(source.replace('label = "ATS"', 'label = "ATS v2"'))
    assert ax.recipe_bytes(a) == ax.recipe_bytes(b) == head.encode()
    (tmp_path / "c.py").write_text(source.replace("budget", "budget2", 1))
    assert ax.recipe_bytes(tmp_path / "c.py") != ax.recipe_bytes(a)


def test_method_figures_parts_and_labels_are_only_declared():
    """No consumer names a method: the modules the registry replaced spell none of them."""
    names = list(STYLES_BEFORE)
    for rel in ("pipelines/reports/figures.py", "pipelines/stages/flops.py", "pipelines/contract.py",
                "pipelines/analysis/roles.py", "pipelines/stages/benchmark.py",
                "pipelines/models/__init__.py", "pipelines/reports/report.py"):
        text = (REPO / rel).read_text()
        found = [n for n in names if f'"{n}"' in text or f"'{n}'" in text]
        assert not found, f"{rel} names {found}"

"""The method registry (pipelines/methods/): each method's declaration is a light file of its
own, imported the ordinary way; the five methods look and count exactly as before, and the
registry's rules (named after its model file, a file of its own, light, no part of a recipe)
hold, each broken one said in one line."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest

from pipelines import axes as ax
from pipelines import methods
from pipelines.errors import UserError
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


def test_declarations_are_their_own_files_and_the_models_declare_none():
    found = methods.methods()
    assert {name: cls.__module__ for name, cls in found.items()} == \
        {name: f"pipelines.methods.{name}" for name in STYLES_BEFORE}
    declared = {p.stem for p in ax.DECLARATIONS_DIR.glob("*.py") if p.stem != "__init__"}
    assert declared == set(found) and declared <= set(ax.method_files())
    before = {name: _fields(cls) for name, cls in found.items()}
    import pipelines.models  # noqa: F401  (every model file, for real: a declaration there fails)

    assert {name: _fields(cls) for name, cls in methods.methods().items()} == before
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


def _no_torch(code: str) -> None:
    code += "; import sys; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_importing_the_registry_imports_no_torch():
    _no_torch("import pipelines.methods")
    _no_torch("from pipelines import contract, methods; from pipelines.reports import figures; "
              "from pipelines.analysis import roles; "
              "assert contract.GFLOPS_PARTS and len(methods.methods()) == 5 and figures.FIGURES")


def test_what_the_snakefile_imports_imports_no_torch():
    """Every ``pipelines`` module the Snakefile and its rules import, then the demo grid
    expanded and the methods looked up, as a Snakefile parse does."""
    text = "\n".join(p.read_text() for p in [REPO / "Snakefile",
                                             *sorted((REPO / "workflow" / "rules").glob("*.smk"))])
    modules = sorted(set(re.findall(r"^\s*(?:from|import) (pipelines[\w.]*)", text, re.M)))
    assert "pipelines.grid" in modules and "pipelines.errors" in modules
    _no_torch("import importlib; "
              f"[importlib.import_module(m) for m in {modules!r}]; "
              "from pipelines.grid import expand_grid, load_ablation; "
              "from pipelines import methods; "
              "runs = expand_grid(load_ablation('configs/ablations/demo.yaml')); "
              "assert runs and methods.order() and any(r.methods for r in runs)")


# ----------------------------------------------------------------------------- the rules
def _declaration(package: str, name: str = "toy", label: str = '"Toy"') -> str:
    return (f"from {package} import METHODS, Method\n\n\n"
            f"@METHODS.register_module(name={name!r})\n"
            f"class ToyMethod(Method):\n    label = {label}\n")


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """``make(files, models=("toy",))``: a package of declarations ``files`` (stem -> text, the
    package name is ``{pkg}``) with its own registry, the model files ``models`` (each imports
    torch: never run); returns (registry, package name)."""
    package = "toy_methods_" + re.sub(r"\W", "_", tmp_path.name)
    root = tmp_path / "src"
    (root / package).mkdir(parents=True)
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    monkeypatch.setattr(ax, "MODELS_DIR", models_dir)
    monkeypatch.syspath_prepend(str(root))

    def make(files, models=("toy",), init=""):
        (root / package / "__init__.py").write_text(
            "from pipelines.methods import Method, MethodRegistry\n" + init +
            "METHODS = MethodRegistry('method_test', scope='toy', locations=[__name__])\n")
        for stem, text in files.items():
            (root / package / f"{stem}.py").write_text(text.replace("{pkg}", package))
        for stem in models:
            (models_dir / f"{stem}.py").write_text("import torch\n")
        return importlib.import_module(package).METHODS, package

    yield make
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


def test_a_declaration_is_an_ordinary_import(toy):
    reg, package = toy({"toy": _declaration("{pkg}"), "_helpers": "X = 1\n"})
    assert reg.get("toy").title() == "Toy" and reg.get("toy").name == "toy"
    assert reg.get("toy").__module__ == f"{package}.toy" and list(reg.module_dict) == ["toy"]


@pytest.mark.parametrize("files, models, init, words", [
    ({"toy": _declaration("{pkg}", name="other")}, ("toy", "other"), "",
     r"toy.ToyMethod: register it as @METHODS.register_module\(name='toy'\), its file's name"),
    ({"ghost": _declaration("{pkg}", name="ghost")}, ("toy",), "",
     r"method 'ghost' has no model file .*ghost.py"),
    ({"toy": "LABEL = 'Toy'\n"}, ("toy",), "", r"/toy.py: declares no method"),
    ({"toy": _declaration("{pkg}", label="AXES")}, ("toy",), "",
     r"/toy.py: cannot import it: NameError: name 'AXES' is not defined"),
    ({"parts": _declaration("{pkg}", name="parts")}, ("parts",),
     "from pipelines.methods import parts  # noqa: F401\n",
     r"/parts.py: 'parts' is already a name of toy_methods_\w+ \(the registry's own\)"),
])
def test_bad_declarations_say_what_is_wrong(toy, files, models, init, words):
    reg, _ = toy(files, models, init)
    with pytest.raises(UserError, match=words) as err:
        reg.import_from_location()
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=words):  # and again on the next lookup
        reg.get("toy")


def test_a_declaration_left_in_a_model_file_is_refused(toy, tmp_path):
    reg, package = toy({})
    stray = tmp_path / "src" / f"{package}_model.py"
    stray.write_text(_declaration(package))
    with pytest.raises(UserError, match=rf"{package}_model.ToyMethod: a method declaration "
                                        rf"lives in a file of its own, {package}/toy.py"):
        importlib.import_module(f"{package}_model")


def test_a_heavy_declaration_is_refused(tmp_path):
    """A declaration that imports torch (its model file, say) is refused by name, in a fresh
    interpreter (torch not yet imported)."""
    (tmp_path / "heavy_toy").mkdir()
    (tmp_path / "heavy_toy" / "__init__.py").write_text(
        "from pipelines.methods import Method, MethodRegistry\n"
        "METHODS = MethodRegistry('m', scope='heavy', locations=[__name__])\n")
    (tmp_path / "heavy_toy" / "toy.py").write_text("import torch\n" + _declaration("heavy_toy"))
    (tmp_path / "toy.py").write_text("import torch\n")  # its model file
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import pathlib; "
            "from pipelines import axes; from pipelines.errors import UserError; import heavy_toy\n"
            f"axes.MODELS_DIR = pathlib.Path({str(tmp_path)!r})\n"
            "try:\n    heavy_toy.METHODS.import_from_location()\n"
            "except UserError as err:\n    print(err)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == ("heavy_toy/toy.py: importing it imports torch; a declaration "
                                   "imports no model code (the Snakefile and the analysis "
                                   "read it)")


def test_a_declaration_is_no_part_of_a_recipe():
    """No declaration file is code a run is built from, nor its classes model types; the model
    files hold no declaration (their bytes are what the recipes always hashed)."""
    types = ax.registered_types()
    assert not {n for n in types if n.endswith("Method")} and \
        not any(p.parent == ax.DECLARATIONS_DIR for p in types.values())
    files = ax.type_code_files(types)
    assert any(p.parent == ax.MODELS_DIR for p in files)
    assert not any(p.parent == ax.DECLARATIONS_DIR for p in files)
    for path in ax.MODELS_DIR.glob("*.py"):
        assert "METHODS" not in path.read_text(), path


def test_method_figures_parts_and_labels_are_only_declared():
    """No consumer names a method: the modules the registry replaced spell none of them."""
    names = list(STYLES_BEFORE)
    for rel in ("pipelines/reports/figures.py", "pipelines/stages/flops.py", "pipelines/contract.py",
                "pipelines/analysis/roles.py", "pipelines/stages/benchmark.py",
                "pipelines/models/__init__.py", "pipelines/reports/report.py"):
        text = (REPO / rel).read_text()
        found = [n for n in names if f'"{n}"' in text or f"'{n}'" in text]
        assert not found, f"{rel} names {found}"

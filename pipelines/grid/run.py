"""The run model: one resolved run of an ablation (:class:`Run`), where its stages write
(:class:`RunPaths`: its rendered ``config.py`` beside its ``run.json``, which every stage reads),
how it is named (:func:`make_id`) and keyed by content (:func:`digest`, :func:`content_key`).
Built by :func:`pipelines.grid.expand.expand_grid`."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipelines import axes as ax

ID_RE = ax.ID_CHARS


@dataclass(frozen=True)
class Run:
    """One run of an ablation, fully resolved.

    Args:
        run_id: readable, stable id (its folders and its MLflow run are named after it).
        variant: the variant block it comes from (the first part of the id).
        settings: axis name -> value (aliases by alias, config keys by key, ``seed``).
        axis_keys: axis name -> the config key (or later-stage option) it sets.
        config: the variant's model config path, normalised (``configs/x.py``).
        max_iters: training iterations.
        options: every config key the run sets (dotted key -> value), merged into ``config``
            by mmengine's merge: the run's config (:func:`pipelines.grid.render.render_run`).
        config_sha: sha256 of that config's rendered text (the file ``RunPaths.config``).
        data_root: dataset folder.
        recipe: hash of what is trained and evaluated (rendered config, data, code).
        train_id, train_recipe: the same without the axes of later stages.
        methods: the methods (``pipelines/models/<method>.py``) the config builds.
        stages: axis name -> its stage, for axes that are not part of training.
        baseline: a run of the ablation's baseline variant (:func:`baseline_variant`).
    """

    run_id: str
    variant: str
    settings: Mapping[str, Any]
    axis_keys: Mapping[str, str]
    config: str
    max_iters: int
    options: Mapping[str, Any]
    config_sha: str
    data_root: str
    recipe: str
    train_id: str
    train_recipe: str
    methods: tuple[str, ...] = ()
    stages: Mapping[str, str] = field(default_factory=dict)
    baseline: bool = False

    @property
    def recipe_hash(self) -> str:
        """The training's 12 hex digits (names the checkpoint folder)."""
        return self.train_recipe

    def params(self) -> dict[str, str]:
        """MLflow params: :data:`pipelines.contract.FIXED_PARAMS` plus every axis by its name."""
        out = {"variant": self.variant, "config": self.config, "max_iters": str(self.max_iters),
               "recipe": self.recipe}
        out.update({name: param_text(value) for name, value in self.settings.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        return dict(run_id=self.run_id, variant=self.variant, settings=dict(self.settings),
                    axis_keys=dict(self.axis_keys), config=self.config,
                    max_iters=self.max_iters, options=dict(self.options),
                    config_sha=self.config_sha,
                    data_root=self.data_root, recipe=self.recipe, train_id=self.train_id,
                    train_recipe=self.train_recipe, methods=list(self.methods),
                    stages=dict(self.stages), baseline=self.baseline, params=self.params())


def run_document(run: "Run", results: str, ablation: str) -> dict[str, Any]:
    """A run's ``run.json``: its settings (:meth:`Run.to_dict`) and ``config_file``, the path of
    its rendered config, which its stages read."""
    return dict(run.to_dict(), config_file=str(RunPaths.of(results, ablation, run).config))


def param_text(value: Any) -> str:
    """An axis value as an MLflow param (booleans lower-case, lists as JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def make_id(variant: str, parts: list[str], identity: Any) -> str:
    text = "-".join([variant] + [p for p in parts if p])
    return ax.cap_id(text, canonical(identity))


#: ``json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)``: the same text from
#: one encoder (json.dumps builds one per call with these options)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode


def canonical(value: Any) -> str:
    return _CANONICAL(value)


def digest(value: Any, n: int = 12) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()[:n]


@dataclass(frozen=True)
class RunPaths:
    """Where each stage of one run writes (small JSON outputs; checkpoints beside, undeclared).

    Every output is keyed by what it depends on: a run's files live in its recipe's
    folder (``results/<stage>/<ablation>/<run-id>/<recipe>/``), its training in the training
    recipe's (``results/train/<ablation>/<train-id>/work-<train recipe>/``). A changed recipe is
    therefore a missing output from ``run.json`` to ``metrics.json``, which Snakemake schedules
    whatever its rerun triggers and with or without ``.snakemake/`` metadata, and a consumer that
    reads a run's files through its ``run.json`` reads the current recipe's files only.
    """

    results: str
    ablation: str
    run_id: str
    train_id: str = ""  # the training it uses (runs differing only in later-stage axes share one)
    train_recipe: str = ""  # that training's recipe: its folder, so a new recipe is a new output
    recipe: str = ""  # the run's own recipe: the folder of its per-run outputs

    def _stage(self, stage: str, name: str | None = None) -> Path:
        folder = Path(self.results) / stage / self.ablation / (name or self.run_id)
        return folder / self.recipe if self.recipe and name is None else folder

    @classmethod
    def of(cls, results: str, ablation: str, run: "Run | Mapping") -> "RunPaths":
        get = run.get if isinstance(run, Mapping) else lambda k: getattr(run, k)
        return cls(str(results), ablation, get("run_id"), get("train_id") or get("run_id"),
                   get("train_recipe") or "", get("recipe") or "")

    @property
    def run_json(self) -> Path:
        return self._stage("runs") / "run.json"

    @property
    def config(self) -> Path:
        """The run's rendered config (beside its ``run.json``): what its stages read."""
        return self._stage("runs") / "config.py"

    @property
    def train_done(self) -> Path:
        """In the recipe's work folder (when known): a changed recipe is a missing output, so
        Snakemake trains it whatever its rerun triggers; checkpoints sit beside, undeclared."""
        if self.train_recipe:
            return self.work_dir(self.train_recipe) / "train_done.json"
        return self._stage("train", self.train_id) / "train_done.json"

    def work_dir(self, recipe_hash: str) -> Path:
        return self._stage("train", self.train_id) / f"work-{recipe_hash}"

    @property
    def metrics(self) -> Path:
        return self._stage("evaluate") / "metrics.json"

    @property
    def flops(self) -> Path:
        return self._stage("flops") / "flops.json"

    @property
    def benchmark(self) -> Path:
        return self._stage("benchmark") / "benchmark.json"

    @property
    def logs(self) -> Path:
        return Path(self.results) / "logs" / self.ablation / self.run_id


def content_key(runs: Iterable["Run"], *extra: Any) -> str:
    """12 hex digits of what an ablation-wide output depends on: every run's id and recipe (and
    ``extra``: the tracking store, say). The manifest, the ingest record and the paired benchmark
    live in a folder of this name, so a changed run set or recipe is a missing output for them
    too, under any rerun trigger."""
    return digest({"runs": sorted((r.run_id, r.recipe) for r in runs), "extra": list(extra)})

"""Ablation grids: an ablation config (``configs/ablations/*.yaml``) -> one :class:`Run` per setting.

A variant names its model config and its axes; an axis is an mmengine config key (dotted path)
with a list of values, or a short alias a method declares next to its model code
(``pipelines/models/<method>.py``: ``AXES``, see :mod:`pipelines.axes`). Axes at the grid's top
level apply to every variant; ``points`` lists exact settings beside (or instead of) the product::

    grid:
      seed: [0, 1]                                  # built-in alias of randomness.seed
      variants:
        baseline:
          config: configs/models/mask2former_r18_synthetic-128x128.py
        pro_scale:
          config: configs/models/mask2former_r18_proscale-333_synthetic-128x128.py
          axes: {schedule: ["3-3-3", "1-1-4"], trc: [true], model.decode_head.num_queries: [10]}
          points: [{schedule: "2-2-2", trc: false}]  # more settings, each once per seed

Every key is checked against the real (resolved) config and every value against its axis before
any job starts; a mistake is one line naming the key.

**Run ids** are readable and depend only on the resolved setting (variant + axis values),
never on YAML order: method aliases in their declared order, then config keys sorted, then the
seed (``pro_scale-s3-3-3-trc-num_queries10-seed0``). Values are written injectively
(:func:`pipelines.axes.format_value`); an id over 100 characters becomes a readable prefix plus
a hash.

**One rendering per run**: a run's config is its variant's (after ``_base_``) with its settings
merged in by mmengine's merge (:mod:`pipelines.grid.render`), written out as a plain config file
(``config.py`` beside its ``run.json``, the data path masked) that every stage reads.

**Recipes** are content: :attr:`Run.recipe` hashes that rendered text, the dataset spec and the
project code the config builds (:func:`pipelines.axes.code_hash`). It names the checkpoint
folder, so a changed config, base
file, synthetic-data spec or method file trains afresh, and only the runs that use it do.
:attr:`Run.train_id` / :attr:`Run.train_recipe` leave out axes of later stages (ECO-M2F's beta):
runs that differ only there share one training.

Pure Python plus mmengine's config reader (no torch): the Snakefile imports it.
"""
# The package: ``run`` (the run model: Run, RunPaths, ids, content keys), ``plain_config`` (model
# configs as plain dicts), ``render`` (a run's config: merged, rendered, written), ``expand``
# (ablation -> runs), ``weights`` (pretrained weights: their identity in a recipe, on disk),
# ``schema`` (reading and validating the ablation file), ``plan_cache`` (the expanded grid saved
# for later starts) and ``cli`` (``python -m pipelines grid``). Callers import from here.
from __future__ import annotations

from pipelines.grid.cli import add_parser, write_run_json, write_runs  # noqa: F401
from pipelines.grid.expand import expand_grid, synthetic_generator_hash  # noqa: F401
from pipelines.grid.plain_config import resolved_base  # noqa: F401
from pipelines.grid.run import Run, RunPaths, content_key  # noqa: F401
from pipelines.grid.schema import load_ablation, validate_ablation  # noqa: F401

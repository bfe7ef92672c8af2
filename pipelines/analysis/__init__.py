"""The analysis of an ablation (``python -m pipelines analyse``, :mod:`pipelines.analysis.cli`).

Runs are read back from MLflow or a recorded CSV (``data``), given their roles (``roles``),
pooled into settings with their intervals, Pareto fronts (``pareto``, pymoo underneath) and
paired verdicts (``settings``), with ECO-M2F's exit ladder (``ladder``) and the budget view
(``budget``). The result is saved once under ``results/analysis/<ablation>/``; the figures and
reports (:mod:`pipelines.reports`) and the notebooks in ``analysis/`` read that folder.
"""

"""What is drawn and written from an ablation's analysis (:mod:`pipelines.analysis`).

``figures`` (with each method's own figures: ``figures_<method>``, and ``figure_base``),
``report`` (markdown), ``html_report`` (one page with every figure and MLflow links) and
``readme_tables`` (the README's results tables, generated from the recorded CSVs).
"""

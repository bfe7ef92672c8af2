"""What is drawn and written from an ablation's analysis (:mod:`pipelines.analysis`).

``figures`` (with each method's own figures: ``figures_<method>``, and ``figure_base``),
``tables`` (the Pareto tables), ``report`` (markdown) and ``html_report`` (one page with every
figure and MLflow links).
"""

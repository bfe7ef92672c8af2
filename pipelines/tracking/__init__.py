"""MLflow: the tracking store, the ingest of finished runs into it, and ``mlflow ui``.

``store`` opens and checks a tracking URI and writes a run's child (never losing a finished
one), ``ingest`` turns a run's files into that child, ``provenance`` records where a run was
made (commit, CPU, ATen capability, library versions) and ``mlflow_ui`` starts the UI with the
link that opens an ablation's runs table.
"""

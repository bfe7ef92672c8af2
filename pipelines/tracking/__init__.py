"""MLflow: the tracking store, the ingest of finished runs into it, and ``mlflow ui``.

``store`` opens a tracking store (its URI checked first: :mod:`pipelines.store_uri`),
``children`` writes a run's child without ever losing a finished one (on a SQL store through
``sql_write``), ``ingest`` turns a run's files (``run_files``) into that child, and
``mlflow_ui`` starts the UI with the link that opens an ablation's runs table.
"""

"""The stages of one run, each a thin command over mmengine / MMSegmentation.

``train`` (with its runner, hooks, resume and multi-GPU launch), ``evaluate``, ``flops`` (the
traced count, its extra handles and the analytic cost models it is checked against),
``benchmark`` (paired latency), ``disk`` (the space check before any job, and the checkpoint
clean-up after ingest), ``weights`` (pretrained weights on disk) and ``failures`` (a failed
attempt recorded, the DAG going on). The workflow's rules call them as
``python -m pipelines <stage>``; each reads the run's rendered config.
"""

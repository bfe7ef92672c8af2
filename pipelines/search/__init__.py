"""The accuracy/cost search (``python -m pipelines search``): Optuna over an ablation's space.

``space`` reads and checks the search's YAML, ``study`` opens the Optuna study and its sampler,
``runs`` turns a trial into a grid run (priced by the FLOPs counter), ``executors`` train it
(Snakemake, in process, or a replay of recorded results), ``loop`` and ``workers`` drive the
trials, ``fidelity`` adds the multi-fidelity schedule (rungs, promotion, stopped settings) and
``tracking`` writes the trials to MLflow. ``cli`` is the command.
"""

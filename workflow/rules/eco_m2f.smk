# ECO-M2F (issue: early exit + gate). Its rules go here, per eco_m2f run and beta:
#
#   derive_exit_quality: frozen exit-trained model -> per-image quality q_k of every exit
#       output  results/derive/<ablation>/<run-id>/quality.json      (independent of beta)
#   train_gate:          quality + beta -> gate weights, exit histogram
#       output  results/gate/<ablation>/<run-id>/gate_done.json      (the run id carries beta)
#   evaluate_gated:      gated model -> metrics.json with expected GFLOPs
#
# Grid expansion already names eco_m2f runs by beta (pipelines/grid.py: `eco_m2f-beta0.005-seed0`);
# get_run_outputs() in common.smk is where their extra outputs join `rule all`.

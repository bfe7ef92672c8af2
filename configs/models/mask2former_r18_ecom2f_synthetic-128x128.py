# ECO-M2F on the tiny CPU model: the 6-layer encoder may exit after layers 2..6 (five exits);
# training draws the exit per iteration (uniform) and weighs the losses by w_k = k / E[k];
# `exit_gate` holds the settings of the gate stage (`python -m pipelines train-gate`).
# Everything else is the base.
_base_ = ['./mask2former_r18_synthetic-128x128.py']

model = dict(
    decode_head=dict(  # pipelines.models.early_exit.EarlyExitMask2FormerHead
        type='EarlyExitMask2FormerHead',
        pixel_decoder=dict(  # pipelines.models.early_exit.EarlyExitPixelDecoder
            type='mmdet.EarlyExitPixelDecoder',
            min_layers=2,
            exit_distribution='uniform',
            test_exit=None)))
# the gate stage (not part of the training recipe): labels argmax_k (q_k - beta k), a
# Linear(256 -> 5) trained with cross-entropy on the derived table's pooled res5 tokens
exit_gate = dict(beta=0.005, lr=0.01, weight_decay=1e-4, epochs=300, seed=0)

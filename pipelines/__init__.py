"""Ablation and experiment orchestration for efficient Mask2Former encoders."""

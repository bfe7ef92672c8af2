"""Datasets: the synthetic multi-scale set (generator and MMSeg dataset class)."""

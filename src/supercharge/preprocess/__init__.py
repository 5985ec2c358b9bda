"""Preprocessing: the model's own eval transform, in every form the suite benchmarks."""

from supercharge.preprocess.reference import TimmPreprocess, timm_batch, timm_transform

__all__ = ["TimmPreprocess", "timm_batch", "timm_transform"]

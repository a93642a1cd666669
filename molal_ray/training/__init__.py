"""Classifier training: the paper's robust loss (pure torch)."""

from molal_ray.training.losses import discrepancy_weights, lambda_for_round, negative_mask, robust_loss

__all__ = ["discrepancy_weights", "lambda_for_round", "negative_mask", "robust_loss"]

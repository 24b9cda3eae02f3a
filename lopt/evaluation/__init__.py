"""Evaluation of trained optimizers against tuned baselines."""

"""Learned optimizers whose update rule is a Universal Neural Functional."""

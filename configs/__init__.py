"""Hydra configs shipped with lopt (searched as pkg://lopt.configs)."""

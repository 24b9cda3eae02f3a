"""Command-line entry points (Hydra applications)."""

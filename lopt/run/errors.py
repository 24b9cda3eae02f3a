"""The error a run reports when it cannot start or continue."""

from __future__ import annotations


class RunError(Exception):
    """A run cannot start or continue; the message says why and what to do."""

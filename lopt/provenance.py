"""What a run's numbers were measured on and which source produced them.

Every tool records this beside its results (``summary.json``, ``results.json``, a zoo's
or a predictor's summary), taken as the work starts, so that a result names the jax
version, the device and the git commit of the code it came from.

>>> environment()
{'jax': '0.6.2', 'backend': 'cpu', 'device': 'cpu', 'device_count': 1, 'commit': '97659f2c1a0b+'}
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import jax


def environment() -> dict:
    """The jax version, backend and device kind the numbers were measured on, and the
    source's git commit (None outside a git checkout; ``+`` marks uncommitted changes)."""
    device = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "commit": source_commit(),
    }


def source_commit() -> str | None:
    """The git commit of the ``lopt`` source in use, with ``+`` if it has uncommitted
    changes; None when the package is not in a git checkout (an installed wheel)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        git = lambda *args: subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None

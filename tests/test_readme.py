"""The README's Python examples run as written: every block, in order, in a fresh directory,
each in its own namespace (a block defines everything it uses, except files an earlier
block saved)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.slow  # every README block, the pretrained five lines included; CI runs it
def test_every_python_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for number, block in enumerate(BLOCKS):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), {})
        except Exception as err:  # name the block: a failure is a documentation bug
            pytest.fail(f"README python block {number} fails: {type(err).__name__}: {err}")

"""The layering of the code: which part of ``lopt`` may import which, and that the scripts
import only ``lopt``, read from the source with ``ast`` (nothing is imported).

A part is a subpackage (``lopt.nf``, ``lopt.learned``, ..., ``lopt.tasks`` from ``tasks/``)
or a top-level module (``lopt.checkpoint``, ``lopt.persistence``, ...); ``lopt`` itself is
the package's ``__init__``. An import inside ``if TYPE_CHECKING:`` is for annotations only
and does not count. A new part, or a new import across parts, needs a line in
:data:`ALLOWED`: the place to decide whether the dependency belongs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

FOUNDATIONS = ("lopt.distributed", "lopt.loggers", "lopt.persistence", "lopt.provenance")

ALLOWED: dict[str, set[str]] = {
    # Importing the package runs its __init__, which re-exports the public API.
    "lopt": {"lopt.learned", "lopt.meta", "lopt.pretrained", "lopt.tasks"},
    # Permutation specs and networks: the base everything builds on.
    "lopt.nf": set(),
    # Files, devices, logs and provenance: they import no other part.
    **{name: set() for name in FOUNDATIONS},
    "lopt.checkpoint": {"lopt.distributed", "lopt.persistence"},
    "lopt.tasks": {"lopt.nf"},
    "lopt.learned": {"lopt.nf", "lopt.persistence"},
    # Generic over optimizers and tasks: it gets them as arguments.
    "lopt.meta": {"lopt.distributed", "lopt.persistence"},
    "lopt.evaluation": {"lopt.learned", "lopt.meta", "lopt.provenance"},
    "lopt.zoo": {"lopt.loggers", "lopt.nf", "lopt.persistence", "lopt.tasks"},
    "lopt.predict": {"lopt.nf", "lopt.persistence"},
    "lopt.bench": {"lopt.nf"},
    # Trained optimizers shipped with the package: loaded through the learned optimizers.
    "lopt.pretrained": {"lopt.learned"},
    # Meta-training runs in a directory, from typed settings: usable without the command line.
    "lopt.run": {
        "lopt.checkpoint",
        "lopt.evaluation",
        "lopt.learned",
        "lopt.meta",
        "lopt.tasks",
        *FOUNDATIONS,
    },
}
# The command-line tools sit on top of every other part, and nothing imports them.
ALLOWED["lopt.cli"] = set(ALLOWED)

COMMAND_LINE_ONLY = ("hydra",)
"""Libraries of the command line that the run layer does without."""


def module_name(path: Path) -> str:
    """The dotted name a source file is imported as (``tasks/`` is ``lopt.tasks``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "tasks":
        parts.insert(0, "lopt")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str | None:
    """The part of ``lopt`` that ``module`` belongs to (None outside ``lopt``)."""
    names = module.split(".")
    if names[0] != "lopt":
        return None
    return ".".join(names[:2])


def is_submodule(name: str) -> bool:
    """Whether ``lopt.<name>`` is a subpackage or module (not a name the package exports)."""
    package = ROOT / "lopt"
    return name == "tasks" or (package / name).is_dir() or (package / f"{name}.py").is_file()


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        typing_only = isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for kept in node.orelse if typing_only else [node]:
            yield kept
            yield from runtime_nodes(kept)


def imports(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """``(line, imported module)`` of every import ``source`` runs, relative ones resolved
    against ``module``; ``from lopt import name`` counts as ``lopt.name`` where that is a
    module, else as ``lopt``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            if base == "lopt":
                for alias in node.names:
                    yield node.lineno, f"lopt.{alias.name}" if is_submodule(alias.name) else base
            else:
                yield node.lineno, base


def sources() -> list[Path]:
    """Every source file of ``lopt`` (``tasks/`` included)."""
    return sorted([*(ROOT / "lopt").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")])


def forbidden(path: Path, source: str | None = None) -> list[str]:
    """The imports in ``path`` (or in ``source``, read as that file) its part may not make."""
    module = module_name(path)
    own = part_of(module)
    allowed = ALLOWED.get(own, set())
    text = path.read_text() if source is None else source
    out = []
    for line, imported in imports(text, module, path.name == "__init__.py"):
        other = part_of(imported)
        if other is not None and other != own and other not in allowed:
            out.append(f"{path.relative_to(ROOT)}:{line}: {own} imports {imported}")
    return out


def test_every_part_has_a_rule():
    parts = {part_of(module_name(path)) for path in sources()}
    assert parts - set(ALLOWED) == set(), "add the new parts to ALLOWED"


def test_parts_import_only_what_they_may():
    problems = [problem for path in sources() for problem in forbidden(path)]
    assert problems == [], "imports across layers:\n" + "\n".join(problems)


def test_nothing_but_the_command_line_imports_it():
    assert [part for part, allowed in ALLOWED.items() if "lopt.cli" in allowed] == []


def test_the_run_layer_does_without_the_command_line_libraries():
    problems = [
        f"{path.relative_to(ROOT)}:{line}: imports {imported}"
        for path in sorted((ROOT / "lopt" / "run").rglob("*.py"))
        for line, imported in imports(path.read_text(), module_name(path), path.stem == "__init__")
        if imported.split(".")[0] in COMMAND_LINE_ONLY
    ]
    assert problems == [], "lopt.run imports the command line's libraries:\n" + "\n".join(problems)


def test_scripts_import_only_lopt():
    local = {path.stem for path in SCRIPTS.glob("*.py")} | {"tasks", "tests", "scripts"}
    problems = [
        f"{path.relative_to(ROOT)}:{line}: imports {imported}"
        for path in sorted(SCRIPTS.glob("*.py"))
        for line, imported in imports(path.read_text(), path.stem, False)
        if imported.split(".")[0] in local
    ]
    assert problems == [], "scripts import what is not in lopt:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("file", "source", "found"),
    [
        ("lopt/nf/layers.py", "from lopt.learned import baselines\n", "lopt.learned"),
        ("lopt/meta/pes.py", "import lopt.cli.train\n", "lopt.cli.train"),
        ("lopt/learned/base.py", "from lopt import cli\n", "lopt.cli"),
        ("tasks/registry.py", "from ..evaluation import stats\n", "lopt.evaluation"),
        ("lopt/persistence.py", "def f():\n    from lopt.nf import spec\n", "lopt.nf"),
        ("lopt/run/training.py", "from lopt.cli.common import build_parts\n", "lopt.cli.common"),
    ],
)
def test_a_forbidden_import_is_found(file, source, found):
    assert [problem.rpartition(" imports ")[2] for problem in forbidden(ROOT / file, source)] == [
        found
    ]


def test_imports_for_annotations_only_do_not_count():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lopt.cli import x\n"
    assert forbidden(ROOT / "lopt" / "persistence.py", source) == []

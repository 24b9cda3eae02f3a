"""A table of meta-training runs and what their validation found, one row per run directory.

    python scripts/lever_table.py runs/levers/mlp/*          # markdown on stdout
    python scripts/lever_table.py runs/levers/mlp/* -o docs/results/levers_mlp.md

The table (:func:`lopt.evaluation.levers.table`) reads every run's own files; a directory
without ``metrics.jsonl`` is left out and named under the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lopt.evaluation.levers import table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="lopt-train run directories")
    parser.add_argument("-o", "--output", type=Path, help="write the table here too")
    args = parser.parse_args()
    usable = [d for d in args.runs if (d / "metrics.jsonl").is_file()]
    skipped = sorted(set(args.runs) - set(usable))
    text = table(usable)
    if skipped:
        text += "\nNo records (left out): " + ", ".join(d.name for d in skipped) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()

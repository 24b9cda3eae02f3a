"""Prints, per task, tuned Adam's training and held-out losses at twice the horizon.

    python scripts/memorisation_check.py                           # the embedded tasks
    python scripts/memorisation_check.py --tasks mlp_digits --seeds 5 --json out.json

A task fit for meta-training keeps tuned Adam's final training loss above 1e-3 and its
held-out (test) loss within 25% of it at twice the horizon (lopt.evaluation.memorisation).
Horizons are the shipped experiments': 2,000 steps for the image tasks and the RNN, 5,000 for
the transformer.
"""

from __future__ import annotations

import argparse
import json
import time

import lopt
from lopt.evaluation.memorisation import MAX_GAP, MIN_TRAIN_LOSS, check_memorisation

HORIZONS = {
    "mlp_augmented_digits": 2000,
    "cnn_augmented_digits": 2000,
    "mlp_digits": 2000,
    "cnn_digits": 2000,
    "mlp_augmented_letters": 2000,
    "cnn_augmented_letters": 2000,
    "rnn_text": 2000,
    "transformer_text": 5000,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(HORIZONS), choices=list(HORIZONS))
    parser.add_argument("--seeds", type=int, default=5, help="evaluation seeds per task")
    parser.add_argument("--factor", type=float, default=2.0, help="multiple of the horizon")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    rows = []
    print(
        f"criteria: final training loss > {MIN_TRAIN_LOSS:g}, |held-out / training - 1| <= "
        f"{MAX_GAP:g}\n"
    )
    print(
        "| task | steps | epochs | Adam lr | train loss (geo. mean) | held-out loss | "
        "held-out ÷ train | memorised | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.tasks:
        start = time.perf_counter()
        task = lopt.get_task(name)
        steps = int(args.factor * HORIZONS[name])
        report = check_memorisation(task, steps, num_seeds=args.seeds)
        seconds = time.perf_counter() - start
        print(
            f"| {name} | {steps} | {report.epochs:.3g} | {report.learning_rate:g} | "
            f"{report.train_loss:.3g} | {report.held_out_loss:.3g} | {1 + report.gap:.3g} | "
            f"{'yes' if report.memorised else 'no'} | {seconds:.0f} |",
            flush=True,
        )
        rows.append(
            {
                "task": name,
                "num_steps": steps,
                "epochs": report.epochs,
                "learning_rate": report.learning_rate,
                "train_losses": report.train_losses.tolist(),
                "held_out_losses": report.held_out_losses.tolist(),
                "train_loss": report.train_loss,
                "held_out_loss": report.held_out_loss,
                "memorised": report.memorised,
                "seconds": seconds,
            }
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"seeds": args.seeds, "factor": args.factor, "tasks": rows}, file, indent=1)


if __name__ == "__main__":
    main()

"""Regenerates docs/weight_space.md and its scatter plots from finished runs, never by hand.

    python scripts/weight_space_page.py --zoos runs/zoo/rnn runs/zoo/cnn \\
        --results runs/predict --levers runs/predict_levers

* ``--zoos``: ``lopt-zoo`` run directories (``summary.json``, ``.hydra/overrides.yaml``);
  the zoo each names is read for its manifest (generation settings, shard times).
* ``--results``: a directory searched for ``lopt-predict`` runs (``result.json``,
  ``predictions.npz``, ``.hydra/overrides.yaml``): the τ table, one scatter plot per zoo
  and predictor (the run of the lowest seed), and the commands, rebuilt from the runs'
  overrides.
* ``--levers``: optional; each subdirectory is one setting tried (its name is the row's
  label), holding ``lopt-predict`` runs. Rows give validation and test τ side by side;
  settings are chosen on validation τ.

Everything on the page comes from those files: the commit and machine load are the ones
the runs recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ORDER = ("unf", "nfn", "statnn", "deepsets")
NAMES = {"unf": "UNF", "nfn": "NFN", "statnn": "STATNN", "deepsets": "Deep Sets"}
# Kendall τ the papers report (UNF paper Table 1, Tiny RNN Zoo; NFN paper, CIFAR-10-GS).
PAPER = {
    "rnn": {"unf": 0.8968, "statnn": 0.8839, "deepsets": 0.8306},
    "cnn": {"nfn": 0.934, "statnn": 0.915},
}


def mean_se(values: list[float]) -> tuple[float, float, int]:
    """Mean, standard error (0 for one value) and count."""
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, se, len(values)


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean, se, n = mean_se(values)
    return f"{mean:.3f} ± {se:.3f} ({n})" if n > 1 else f"{mean:.3f} (1)"


def overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else []


def sweep_command(program: str, runs: list[Path]) -> str:
    """One command that reruns ``runs``: each key with the values its runs used."""
    values: dict[str, list[str]] = {}
    for run in runs:
        for item in overrides(run):
            key, _, value = item.partition("=")
            if value not in values.setdefault(key, []):
                values[key].append(value)
    multi = any(len(v) > 1 for v in values.values())
    quote = lambda s: f"'{s}'" if any(c in s for c in "[]") else s
    parts = [quote(f"{key}={','.join(v)}") for key, v in values.items()]
    return " ".join([program, *(["-m"] if multi else []), *parts])


def load_results(root: Path) -> list[tuple[Path, dict]]:
    return [
        (path.parent, json.loads(path.read_text())) for path in sorted(root.rglob("result.json"))
    ]


def zoo_section(run: Path) -> list[str]:
    summary = json.loads((run / "summary.json").read_text())
    manifest = json.loads((Path(summary["zoo"]) / "manifest.json").read_text())
    description, timing, env = manifest["description"], summary.get("timing_this_run"), {}
    env = summary.get("environment", {})
    config = summary["config"]["zoo"]
    lines = [
        f"### Zoo `{config['name']}`: {description['problem']} {description['options']}",
        "",
        f"`{sweep_command('lopt-zoo', [run])}`",
        "",
        f"* {summary['networks']} networks, seed {description['seed']}, "
        f"{len(manifest['shards'])} shards; hyperparameters per network: "
        + ", ".join(f"{key} {value}" for key, value in description["ranges"].items()),
        f"* generation: {summary['seconds_this_run']} s wall time this run "
        f"({summary['seconds_all_shards']} s training over all shards"
        + (
            f"; compile {timing['compile_seconds']} s for {timing['chunk_size']} networks a call"
            if timing
            else ""
        )
        + f"), on {env.get('cpus', '?')} CPU cores with 1-minute load average "
        f"{env.get('load_average_start', '?')} at the start and {env.get('load_average_end', '?')}"
        " at the end (above the core count, other work shared the machine)",
        "",
        "| metric | mean | std | min | q10 | q25 | median | q75 | q90 | max |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, spread in summary["metrics"].items():
        keys = ("mean", "std", "min", "q10", "q25", "median", "q75", "q90", "max")
        lines.append(f"| {name} | " + " | ".join(f"{spread[k]:.3f}" for k in keys) + " |")
    return [*lines, ""]


def ordered(models) -> list[str]:
    return sorted(models, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))


def tau_section(results: list[tuple[Path, dict]], figures: Path, page: Path) -> list[str]:
    by_zoo: dict[str, dict[str, list[tuple[Path, dict]]]] = defaultdict(lambda: defaultdict(list))
    for run, result in results:
        by_zoo[result["zoo"]][result["model"]].append((run, result))
    lines = [
        "| zoo | predictor | test τ (seeds) | validation τ | paper | epochs (best) | s / run | "
        "invariance error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    plots, commands, claims = [], [], []
    for zoo in sorted(by_zoo, reverse=True):
        models = by_zoo[zoo]
        commands.append(
            sweep_command("lopt-predict", [r for runs in models.values() for r, _ in runs])
        )
        means = {}
        for model in ordered(models):
            runs = sorted(models[model], key=lambda item: item[1]["seed"])
            taus = [r["kendall_tau"] for _, r in runs if r["kendall_tau"] is not None]
            vals = [r["validation_tau"] for _, r in runs if r["validation_tau"] is not None]
            means[model] = mean_se(taus) if taus else None
            epochs = ", ".join(f"{r['epochs_run']} ({r['best_epoch']})" for _, r in runs)
            seconds = statistics.fmean(r["seconds"] for _, r in runs)
            error = max(r["invariance_error"] for _, r in runs)
            paper = PAPER.get(zoo, {}).get(model)
            lines.append(
                f"| {zoo} | {NAMES.get(model, model)} | {fmt(taus)} | {fmt(vals)} | "
                f"{paper if paper else '—'} | {epochs} | {seconds:.0f} | {error:.1e} |"
            )
            plots.append(scatter(zoo, model, runs[0], figures))
        claims += ordering_claims(zoo, means)
    lines += ["", "Commands:", "", "```bash", *commands, "```", "", *claims, ""]
    lines += ["Predicted against true test metric on the held-out split (lowest seed):", ""]
    lines += [f"![{zoo} {model}]({path.relative_to(page.parent)})" for zoo, model, path in plots]
    return [*lines, ""]


def ordering_claims(zoo: str, means: dict) -> list[str]:
    """The papers' orderings, checked on the mean τ (differences with their s.e.)."""
    wanted = {
        "rnn": [("unf", "statnn"), ("statnn", "deepsets")],
        "cnn": [("nfn", "statnn"), ("unf", "statnn")],
    }
    out = []
    for better, worse in wanted.get(zoo, []):
        if means.get(better) and means.get(worse):
            (a, sa, _), (b, sb, _) = means[better], means[worse]
            diff, se = a - b, math.hypot(sa, sb)
            verdict = "holds" if diff > 0 else "does not hold"
            out.append(
                f"* {zoo}: {NAMES[better]} > {NAMES[worse]} {verdict}: difference {diff:+.3f} ± "
                f"{se:.3f} (z = {diff / se if se else float('nan'):.1f})"
            )
    return out


def scatter(zoo: str, model: str, run: tuple[Path, dict], figures: Path) -> tuple[str, str, Path]:
    directory, result = run
    data = np.load(directory / "predictions.npz")
    figures.mkdir(parents=True, exist_ok=True)
    path = figures / f"{zoo}_{model}.png"
    fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=110)
    ax.scatter(data["targets"], data["predictions"], s=6, alpha=0.6)
    low = float(min(data["targets"].min(), data["predictions"].min()))
    high = float(max(data["targets"].max(), data["predictions"].max()))
    ax.plot([low, high], [low, high], color="grey", lw=0.8)
    ax.set_xlabel(f"true {result['target']}")
    ax.set_ylabel("predicted")
    ax.set_title(
        f"{zoo} {NAMES.get(model, model)}, seed {result['seed']}: τ {result['kendall_tau']:.3f}"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return zoo, model, path


def lever_section(root: Path) -> list[str]:
    lines = [
        "| setting | zoo | predictor | overrides | validation τ | test τ |",
        "|---|---|---|---|---|---|",
    ]
    fixed = ("seed=", "zoo=", "model=", "hydra.")
    for lever in sorted(p for p in root.iterdir() if p.is_dir()):
        groups: dict[tuple[str, str], list[tuple[Path, dict]]] = defaultdict(list)
        for run, result in load_results(lever):
            groups[(result["zoo"], result["model"])].append((run, result))
        for (zoo, model), runs in sorted(groups.items()):
            changed = {o for run, _ in runs for o in overrides(run) if not o.startswith(fixed)}
            shown = " ".join(f"`{c}`" for c in sorted(changed)) or "(defaults)"
            val = [r["validation_tau"] for _, r in runs if r["validation_tau"] is not None]
            test = [r["kendall_tau"] for _, r in runs if r["kendall_tau"] is not None]
            lines.append(
                f"| {lever.name} | {zoo} | {NAMES.get(model, model)} | {shown} | "
                f"{fmt(val)} | {fmt(test)} |"
            )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoos", nargs="+", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--levers", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/weight_space.md"))
    args = parser.parse_args()
    results = load_results(args.results)
    if not results:
        raise SystemExit(f"no result.json under {args.results}")
    first = results[0][1]
    env = first.get("environment", {})
    commits = sorted({r.get("environment", {}).get("commit") or "?" for _, r in results})
    budget = first["config"]
    lines = [
        "# Predicting a network's test accuracy from its weights",
        "",
        "Generated by `scripts/weight_space_page.py` from the runs' own files; do not edit. "
        f"Source commit of the runs: {', '.join(commits)}; jax {env.get('jax', '?')} on "
        f"{env.get('cpus', '?')} CPU cores ({env.get('device', '?')}).",
        "",
        "Each predictor reads a trained network's weights (per-tensor standardised with the "
        "train split's statistics) and predicts its test accuracy; it trains on the train split "
        "(MSE on the standardised target, AdamW), keeps the epoch of best validation Kendall τ, "
        "and is scored once on the held-out test split. Every run checks that its trained "
        "predictor is invariant: the largest change of a test prediction when each test network "
        "is permuted at random per the zoo's spec is the *invariance error*.",
        "",
        "## Zoos",
        "",
    ]
    for run in args.zoos:
        lines += zoo_section(run)
    lines += [
        "## Kendall τ on the held-out split",
        "",
        f"Split {budget['split']} (train / validation / test, split seed {budget['split_seed']}); "
        f"predictor budget: fit {budget['fit']}; model {budget['model']} (per run, see "
        "`result.json`). Mean ± standard error over seeds (count in brackets).",
        "",
    ]
    lines += tau_section(results, args.out.parent / "weight_space", args.out)
    if args.levers and args.levers.is_dir():
        lines += [
            "## Settings tried",
            "",
            "One change at a time against the defaults, chosen on validation τ only:",
            "",
            *lever_section(args.levers),
        ]
    lines += [
        "Regenerate this page:",
        "",
        "```bash",
        "python scripts/weight_space_page.py "
        + " ".join(
            ["--zoos", *map(str, args.zoos), "--results", str(args.results)]
            + (["--levers", str(args.levers)] if args.levers else [])
        ),
        "```",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

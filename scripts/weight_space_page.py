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


def sweep_commands(program: str, runs: list[Path]) -> list[str]:
    """Commands that rerun ``runs``: one per set of fixed overrides, sweeping the rest."""
    swept = ("model=", "seed=")
    groups: dict[tuple[str, ...], list[list[str]]] = defaultdict(list)
    for run in runs:
        items = overrides(run)
        groups[tuple(o for o in items if not o.startswith(swept))].append(items)
    quote = lambda s: f"'{s}'" if any(c in s for c in "[]") else s
    commands = []
    for fixed, members in groups.items():
        values: dict[str, list[str]] = {}
        for items in members:
            for item in items:
                key, _, value = item.partition("=")
                if item not in fixed and value not in values.setdefault(key, []):
                    values[key].append(value)
        multi = len(members) > 1
        parts = [*map(quote, fixed), *(f"{key}={','.join(v)}" for key, v in values.items())]
        commands.append(" ".join([program, *(["-m"] if multi else []), *parts]))
    return commands


def load_results(root: Path) -> list[tuple[Path, dict]]:
    return [
        (path.parent, json.loads(path.read_text())) for path in sorted(root.rglob("result.json"))
    ]


def zoo_section(run: Path) -> list[str]:
    summary = json.loads((run / "summary.json").read_text())
    # relative to the run directory (older summaries hold an absolute path)
    manifest = json.loads((run / summary["zoo"] / "manifest.json").read_text())
    description, timing = manifest["description"], summary.get("timing_this_run")
    env = summary.get("environment", {})
    # runs before the summary recorded its config have Hydra's copy only
    config = (
        summary.get("config") or yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    )["zoo"]
    lines = [
        f"### Zoo `{config['name']}`: {description['problem']} {description['options']}",
        "",
        f"`{sweep_commands('lopt-zoo', [run])[0]}`",
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
        + ")"
        + (
            f", on {env['cpus']} CPU cores with 1-minute load average "
            f"{env['load_average_start']} at the start and {env['load_average_end']} at the end"
            + (
                " (above the core count, other work shared the machine)"
                if max(env["load_average_start"], env["load_average_end"]) > env["cpus"]
                else ""
            )
            if env
            else " (machine load not recorded by this run)"
        ),
        f"* permutation spec (stored in the manifest): {spec_summary(manifest)}",
        "",
        "| metric | mean | std | min | q10 | q25 | median | q75 | q90 | max |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, spread in summary["metrics"].items():
        keys = ("mean", "std", "min", "q10", "q25", "median", "q75", "q90", "max")
        lines.append(f"| {name} | " + " | ".join(f"{spread[k]:.3f}" for k in keys) + " |")
    return [*lines, ""]


def spec_summary(manifest: dict) -> str:
    """The spec's ids by kind, each with the tensor axes it permutes, then the fixed axes."""
    kinds = {"id": "hidden", "by_choice": "by choice", "spatial": "spatial"}
    axes_of: dict[tuple[str, str], list[str]] = defaultdict(list)
    fixed = []
    for tensor, entries in manifest["spec"].items():
        for position, entry in enumerate(entries):
            if entry is None:
                fixed.append(f"{tensor}:{position}")
            else:
                ((kind, name),) = entry.items()
                axes_of[(kind, name)].append(f"{tensor}:{position}")
    where = lambda axes: ", ".join(axes) if len(axes) <= 4 else f"{len(axes)} axes"
    by_kind = sorted(axes_of.items(), key=lambda item: list(kinds).index(item[0][0]))
    parts = [f"{kinds[kind]} `{name}` ({where(axes)})" for (kind, name), axes in by_kind]
    return "; ".join(parts + ([f"fixed ({where(fixed)})"] if fixed else []))


def ordered(models) -> list[str]:
    return sorted(models, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))


def tau_section(results: list[tuple[Path, dict]], figures: Path, page: Path) -> list[str]:
    by_zoo: dict[str, dict[str, list[tuple[Path, dict]]]] = defaultdict(lambda: defaultdict(list))
    for run, result in results:
        by_zoo[result["zoo"]][result["model"]].append((run, result))
    lines = [
        "| zoo | predictor | test τ (seeds) | validation τ | paper | budget | epochs (best) | "
        "s / run | invariance error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    plots, commands, claims = [], [], []
    for zoo in sorted(by_zoo, reverse=True):
        models = by_zoo[zoo]
        commands += sweep_commands("lopt-predict", [r for runs in models.values() for r, _ in runs])
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
            config = runs[0][1]["config"]
            shape = config["model"]
            size = (
                ""
                if model == "statnn"
                else f"width {shape['width']}, depth {shape['depth']}, "
                f"{shape.get('symmetry', 'np').upper()}, "
            )
            budget = f"{size}head {shape['head']}, ≤ {config['fit']['max_epochs']} epochs"
            lines.append(
                f"| {zoo} | {NAMES.get(model, model)} | {fmt(taus)} | {fmt(vals)} | "
                f"{paper if paper else '—'} | {budget} | {epochs} | {seconds:.0f} | {error:.1e} |"
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


def lever_section(root: Path, defaults: list[tuple[Path, dict]]) -> list[str]:
    """One row per setting, zoo and predictor: the defaults first, then each lever."""
    lines = [
        "| setting | zoo | predictor | overrides | validation τ | test τ |",
        "|---|---|---|---|---|---|",
    ]
    fixed = ("seed=", "zoo=", "model=", "hydra.")
    settings = [("defaults", defaults)]
    settings += [(p.name, load_results(p)) for p in sorted(root.iterdir()) if p.is_dir()]
    rows = []
    for name, results in settings:
        groups: dict[tuple[str, str], list[tuple[Path, dict]]] = defaultdict(list)
        for run, result in results:
            groups[(result["zoo"], result["model"])].append((run, result))
        rows += [(zoo, model, name, runs) for (zoo, model), runs in groups.items()]
    rank = lambda model: ORDER.index(model) if model in ORDER else len(ORDER)
    rows.sort(key=lambda row: rank(row[1]))
    rows.sort(key=lambda row: row[0], reverse=True)  # stable: rnn, then cnn
    for zoo, model, name, runs in rows:
        changed = {o for run, _ in runs for o in overrides(run) if not o.startswith(fixed)}
        shown = " ".join(f"`{c}`" for c in sorted(changed)) or "—"
        val = [r["validation_tau"] for _, r in runs if r["validation_tau"] is not None]
        test = [r["kendall_tau"] for _, r in runs if r["kendall_tau"] is not None]
        lines.append(
            f"| {name} | {zoo} | {NAMES.get(model, model)} | {shown} | {fmt(val)} | {fmt(test)} |"
        )
    # per zoo and predictor, the setting of best mean validation τ, and its test τ
    best: dict[tuple[str, str], tuple[float, str, list[float]]] = {}
    for zoo, model, name, runs in rows:
        val = [r["validation_tau"] for _, r in runs if r["validation_tau"] is not None]
        test = [r["kendall_tau"] for _, r in runs if r["kendall_tau"] is not None]
        if val and ((zoo, model) not in best or statistics.fmean(val) > best[(zoo, model)][0]):
            best[(zoo, model)] = (statistics.fmean(val), name, test)
    lines += [
        "",
        "Each predictor with the setting of its best mean validation τ:",
        "",
        "| zoo | predictor | setting | test τ (seeds) |",
        "|---|---|---|---|",
    ]
    chosen: dict[str, dict] = defaultdict(dict)
    for (zoo, model), (_, name, test) in best.items():
        lines.append(f"| {zoo} | {NAMES.get(model, model)} | {name} | {fmt(test)} |")
        chosen[zoo][model] = mean_se(test) if test else None
    lines.append("")
    for zoo, means in chosen.items():
        lines += ordering_claims(zoo, means)
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
        "is permuted at random by an element of the predictor's group is the *invariance "
        "error*. The group is the zoo's spec (NP: hidden neurons and the axes permuted by "
        "choice: input features, tokens, classes) or its hidden neurons alone (HNP, "
        "`model.symmetry=hnp`, the by-choice axes read as channels); STATNN's per-tensor "
        "statistics are invariant to every permutation of a tensor.",
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
        f"training: {budget['fit']} (each run's own in its `result.json`). Mean ± standard "
        "error over seeds (count in brackets); the predictor's seed sets its init and "
        "minibatch order, the split is the same for all.",
        "",
    ]
    lines += tau_section(results, args.out.parent / "weight_space", args.out)
    if args.levers and args.levers.is_dir():
        lines += [
            "## Settings tried",
            "",
            "One change at a time against the defaults, chosen on validation τ only:",
            "",
            *lever_section(args.levers, results),
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

"""Regenerates docs/weight_space.md and its scatter plots from finished runs, never by hand.

    python scripts/weight_space_page.py --zoos runs/zoo/rnn runs/zoo/cnn \\
        --results runs/predict --levers runs/predict_levers

* ``--zoos``: ``lopt-zoo`` run directories (``summary.json``, ``.hydra/overrides.yaml``);
  the zoo each names is read for its manifest (generation settings, shard times).
* ``--results``: a directory searched for ``lopt-predict`` runs (``result.json``,
  ``predictions.npz``, ``.hydra/overrides.yaml``): the table of τ, R² and mean absolute
  error over split seeds and training seeds, one scatter plot per zoo and predictor (the
  run of the lowest split seed and seed), the paired bootstrap interval of every
  difference in τ between two predictors of a zoo (:func:`lopt.predict.paired_bootstrap`,
  over the split seeds both ran), and the commands, rebuilt from the runs' overrides.
  Predictors whose predictions are the same on every run are one row.
* ``--levers``: optional; each subdirectory is one setting tried (its name is the row's
  label), holding ``lopt-predict`` runs. Rows give validation and test τ side by side;
  settings are chosen on validation τ.

An ordering *holds* only when the 95% interval of its difference lies above 0; *reversed*
when it lies below; otherwise it is *undecided*. Everything on the page comes from those
files: the commit and machine load are the ones the runs recorded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
import yaml

from lopt.nf.matching import kind_of
from lopt.nf.spec_json import spec_from_json, tensor_paths
from lopt.predict import Interval, paired_bootstrap

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ORDER = (
    "unf",
    "nfn",
    "statnn",
    "deepsets_per_tensor",
    "deepsets_single_set",
    "hyperparameters",
)
NAMES = {
    "unf": "UNF",
    "nfn": "NFN",
    "statnn": "STATNN",
    "deepsets": "Deep Sets (per tensor)",  # the former name of deepsets_per_tensor
    "deepsets_per_tensor": "Deep Sets (per tensor)",
    "deepsets_single_set": "Deep Sets (single set)",
    "hyperparameters": "hyperparameters only",
}
SYMMETRIC = ("unf", "nfn", "deepsets", "deepsets_per_tensor")
"""Predictors whose group is set by ``model.symmetry`` (NP or HNP)."""


class Paper(NamedTuple):
    """The numbers a paper reports on its own zoo, and how that zoo was made."""

    source: str
    zoo: str
    taus: dict[str, tuple[str, float]]  # row key -> (the paper's variant, Kendall τ)


# Kendall τ the papers report, keyed by our zoo's problem: the closest zoo of each paper.
PAPERS = {
    "rnn_addition": Paper(
        "UNF paper (Zhou et al. 2024), Table 1",
        "Tiny RNN Zoo: 10⁴ sequence-to-sequence GRUs (hidden 128) on arithmetic, varying "
        "only the learning rate (log-uniform 1e-4 to 1e-2) and batch size (64, 128, 256); "
        "target: test success rate",
        {
            "unf": ("UNF", 0.8968),
            "statnn": ("STATNN", 0.8839),
            "deepsets_single_set": ("Deep Sets", 0.8306),
        },
    ),
    "cnn_digits": Paper(
        "NFN paper (Zhou et al. 2023)",
        "CIFAR-10-GS of the Small CNN Zoo (Unterthiner et al. 2020): CNNs of 3 conv layers "
        "of 16 channels on greyscale CIFAR-10, varying the optimizer, learning rate, L2, "
        "dropout, initialisation and train fraction; target: test accuracy",
        {
            "nfn": ("NFN-NP", 0.922),
            "nfn_hnp": ("NFN-HNP", 0.934),
            "statnn": ("STATNN", 0.915),
        },
    ),
}
# The papers' orderings, checked on every zoo of that problem.
WANTED = {
    "rnn_addition": [("unf", "statnn"), ("statnn", "deepsets_single_set")],
    "cnn_digits": [("nfn", "statnn"), ("unf", "statnn"), ("nfn_hnp", "statnn")],
}


class Run(NamedTuple):
    """One ``lopt-predict`` run: its directory and ``result.json``."""

    directory: Path
    result: dict


def mean_se(values: list[float]) -> tuple[float, float, int]:
    """Mean, standard error (0 for one value) and count."""
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, se, len(values)


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "—"
    mean, se, n = mean_se(values)
    return f"{mean:.{digits}f} ± {se:.{digits}f} ({n})" if n > 1 else f"{mean:.{digits}f} (1)"


def overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else []


def sweep_commands(program: str, runs: list[Path]) -> list[str]:
    """Commands that rerun ``runs``: one per set of fixed overrides, sweeping the rest."""
    swept = ("model=", "seed=", "split_seed=")
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


def load_results(root: Path) -> list[Run]:
    return [
        Run(path.parent, json.loads(path.read_text())) for path in sorted(root.rglob("result.json"))
    ]


def row_key(result: dict) -> str:
    """The predictor a run belongs to: its kind, with ``_hnp`` for an HNP variant."""
    model = result["model"]
    model = "deepsets_per_tensor" if model == "deepsets" else model
    symmetry = result["config"]["model"].get("symmetry", "np")
    return f"{model}_hnp" if model in SYMMETRIC and symmetry == "hnp" else model


def row_name(key: str) -> str:
    model, hnp = key.removesuffix("_hnp"), key.endswith("_hnp")
    return NAMES.get(model, model) + ("-HNP" if hnp else "")


def rank(key: str) -> tuple[int, bool]:
    model = key.removesuffix("_hnp")
    return (ORDER.index(model) if model in ORDER else len(ORDER), key.endswith("_hnp"))


def split_of(result: dict) -> int:
    return int(result.get("split_seed", result["config"].get("split_seed", 0)))


def run_id(run: Run) -> tuple[int, int]:
    return split_of(run.result), int(run.result["seed"])


def predictions(run: Run) -> tuple[np.ndarray, np.ndarray]:
    with np.load(run.directory / "predictions.npz") as data:
        return data["predictions"], data["targets"]


def same_predictions(a: list[Run], b: list[Run]) -> bool:
    """Whether two predictors ran the same splits and seeds and predicted the same."""
    by_id = {run_id(run): run for run in b}
    if sorted(map(run_id, a)) != sorted(by_id):
        return False
    return all(
        np.allclose(predictions(run)[0], predictions(by_id[run_id(run)])[0], rtol=1e-6, atol=0)
        for run in a
    )


class Row(NamedTuple):
    """One row of the table: predictors whose predictions coincide on every run."""

    keys: list[str]
    runs: list[Run]

    @property
    def name(self) -> str:
        return " = ".join(row_name(key) for key in self.keys)


def merge_identical(predictors: dict[str, list[Run]]) -> list[Row]:
    """One :class:`Row` per predictor, those whose predictions coincide merged."""
    rows: list[Row] = []
    for key in sorted(predictors, key=rank):
        twin = next((r for r in rows if same_predictions(r.runs, predictors[key])), None)
        if twin is None:
            rows.append(Row([key], sorted(predictors[key], key=run_id)))
        else:
            twin.keys.append(key)
    return rows


def values(runs: list[Run], field: str) -> list[float]:
    return [r.result[field] for r in runs if r.result.get(field) is not None]


def table_line(zoo: str, row: Row, paper: Paper | None) -> str:
    runs = row.runs
    epochs = ", ".join(f"{r.result['epochs_run']} ({r.result['best_epoch']})" for r in runs[:6])
    epochs += ", …" if len(runs) > 6 else ""
    seconds = statistics.fmean(r.result["seconds"] for r in runs)
    errors = [r.result["invariance_error"] for r in runs]
    error = "—" if any(e is None for e in errors) else f"{max(errors):.1e}"
    quoted = [
        f"{paper.taus[k][0]} {paper.taus[k][1]}" for k in row.keys if paper and k in paper.taus
    ]
    return (
        f"| {zoo} | {row.name} | {fmt(values(runs, 'kendall_tau'))} | "
        f"{fmt(values(runs, 'r_squared'))} | {fmt(values(runs, 'mean_absolute_error'))} | "
        f"{fmt(values(runs, 'validation_tau'))} | {', '.join(quoted) or '—'} | "
        f"{budget_text(runs[0].result, row.keys[0])} | {epochs} | {seconds:.0f} | "
        f"{dropped_text(runs)} | {error} |"
    )


def paired(a: list[Run], b: list[Run]) -> tuple[list, list, list, list[int]] | None:
    """Per split seed both ran (with the same test networks): their predictions and targets."""
    by_split = lambda runs: {
        s: [r for r in runs if split_of(r.result) == s] for s in {split_of(r.result) for r in runs}
    }
    left, right = by_split(a), by_split(b)
    first, second, targets, splits = [], [], [], []
    for split in sorted(set(left) & set(right)):
        ys = [predictions(r)[1] for r in left[split] + right[split]]
        if any(not np.array_equal(ys[0], y) for y in ys[1:]):
            continue  # not the same test networks: no pairing
        first.append(np.stack([predictions(r)[0] for r in left[split]]))
        second.append(np.stack([predictions(r)[0] for r in right[split]]))
        targets.append(ys[0])
        splits.append(split)
    return (first, second, targets, splits) if splits else None


def compare(a: list[Run], b: list[Run], resamples: int) -> tuple[Interval, int] | None:
    """The bootstrap interval of τ(a) - τ(b) and the number of split seeds it pairs."""
    pairs = paired(a, b)
    if pairs is None:
        return None
    first, second, targets, splits = pairs
    interval = paired_bootstrap(first, second, targets, resamples=resamples, seed=0)
    return interval, len(splits)


def interval_text(interval: Interval) -> str:
    return f"{interval.estimate:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]"


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
    words = {"hidden": "hidden", "by_choice": "by choice", "spatial": "spatial"}
    axes_of: dict[tuple[str, str], list[str]] = defaultdict(list)
    fixed = []
    for tensor, axes in tensor_paths(spec_from_json(manifest["spec"])).items():
        for position, perm_id in enumerate(axes):
            if perm_id is None:
                fixed.append(f"{tensor}:{position}")
            else:
                name = getattr(perm_id, "name", perm_id)
                axes_of[(kind_of(perm_id), name)].append(f"{tensor}:{position}")
    where = lambda axes: ", ".join(axes) if len(axes) <= 4 else f"{len(axes)} axes"
    by_kind = sorted(axes_of.items(), key=lambda item: list(words).index(item[0][0]))
    parts = [f"{words[kind]} `{name}` ({where(axes)})" for (kind, name), axes in by_kind]
    return "; ".join(parts + ([f"fixed ({where(fixed)})"] if fixed else []))


def budget_text(result: dict, key: str) -> str:
    config = result["config"]
    shape = config["model"]
    size = (
        ""
        if key.removesuffix("_hnp") in ("statnn", "hyperparameters")
        else f"width {shape['width']}, depth {shape['depth']}, "
    )
    return f"{size}head {shape['head']}, ≤ {config['fit']['max_epochs']} epochs"


def dropped_text(runs: list[Run]) -> str:
    counts = [r.result.get("networks_dropped") for r in runs]
    if any(c is None for c in counts):
        return "—"
    weights = {c["non_finite_weights"] for c in counts}
    target = {c["non_finite_target"] for c in counts}
    show = lambda values: "/".join(str(v) for v in sorted(values))
    return f"{show(weights)} + {show(target)}"


def tau_section(results: list[Run], figures: Path, page: Path, resamples: int) -> list[str]:
    by_zoo: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in results:
        by_zoo[run.result["zoo"]][row_key(run.result)].append(run)
    lines = [
        "| zoo | predictor | test τ (runs) | R² | MAE | validation τ | paper (variant) | "
        "budget | epochs (best) | s / run | dropped | invariance error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    plots, commands, differences, counts, comparisons = [], [], [], [], []
    for zoo in sorted(by_zoo, reverse=True):
        predictors = by_zoo[zoo]
        directories = [r.directory for runs in predictors.values() for r in runs]
        commands += sweep_commands("lopt-predict", directories)
        first = next(iter(predictors.values()))[0]
        problem = zoo_description(first).get("problem")
        paper = PAPERS.get(problem)
        rows = merge_identical(predictors)
        for row in rows:
            lines.append(table_line(zoo, row, paper))
            splits = sorted({split_of(r.result) for r in row.runs})
            counts.append(f"{zoo} {row.name}: {len(row.runs)} runs, split seeds {splits}")
            plots.append(scatter(zoo, row.keys[0], row.name, row.runs[0], figures))
        differences += difference_lines(zoo, rows, resamples)
        differences += wanted_lines(zoo, problem, predictors, resamples)
        if paper:
            comparisons.append(zoo_comparison(zoo, first, paper))
    lines += ["", "Runs per row: " + "; ".join(counts) + ".", ""]
    lines += [*[f"* {line}" for line in comparisons], ""]
    lines += ["Commands:", "", "```bash", *commands, "```", ""]
    lines += [
        "### Differences in test τ",
        "",
        "Every pair of predictors of a zoo: the observed difference (mean over the split "
        "seeds both ran, each the mean over training seeds) and its paired bootstrap 95% "
        f"interval ({resamples} resamples of the split seeds and, within each, of the test "
        "networks, the same networks for both predictors). *holds*: the interval lies above "
        "0; *reversed*: below; *undecided*: it contains 0.",
        "",
        "| zoo | difference | Δτ [95% interval] | split seeds | verdict |",
        "|---|---|---|---|---|",
        *differences,
        "",
    ]
    lines += [
        "Predicted against true test metric on the held-out split (lowest split seed and seed):",
        "",
    ]
    lines += [f"![{zoo} {name}]({path.relative_to(page.parent)})" for zoo, name, path in plots]
    return [*lines, ""]


def difference_lines(zoo: str, rows: list[Row], resamples: int) -> list[str]:
    out = []
    for a, b in itertools.combinations(rows, 2):
        found = compare(a.runs, b.runs, resamples)
        if found is None:
            continue
        interval, splits = found
        out.append(
            f"| {zoo} | {a.name} − {b.name} | {interval_text(interval)} | {splits} | "
            f"{interval.verdict} |"
        )
    return out


def wanted_lines(zoo: str, problem: str, keys: dict[str, list[Run]], resamples: int) -> list[str]:
    """The papers' orderings on this zoo, each with its interval (rows already in the table)."""
    out = []
    for better, worse in WANTED.get(problem, []):
        if better in keys and worse in keys:
            found = compare(keys[better], keys[worse], resamples)
            if found:
                interval, splits = found
                out.append(
                    f"| {zoo} | paper's ordering {row_name(better)} > {row_name(worse)} | "
                    f"{interval_text(interval)} | {splits} | {interval.verdict} |"
                )
    return out


def zoo_description(run: Run) -> dict:
    """How the run's zoo was made: its manifest's ``description``."""
    manifest = run.directory / run.result["zoo_path"] / "manifest.json"
    return json.loads(manifest.read_text())["description"]


def zoo_comparison(zoo: str, run: Run, paper: Paper) -> str:
    """One sentence: the paper's zoo against ours, as our zoo's manifest describes it."""
    description = zoo_description(run)
    ranges = description.get("ranges", {})
    varied = [name for name, bounds in ranges.items() if len(set(map(float, bounds))) > 1]
    return (
        f"{zoo}: the paper column quotes the {paper.source} on its {paper.zoo}. This zoo: "
        f"{run.result['zoo_networks']} networks of {description.get('problem', '?')} "
        f"{description.get('options', {})}, varying {', '.join(varied) or 'nothing'}; "
        f"target {run.result['target']}."
    )


def scatter(zoo: str, key: str, name: str, run: Run, figures: Path) -> tuple[str, str, Path]:
    guessed, targets = predictions(run)
    figures.mkdir(parents=True, exist_ok=True)
    path = figures / f"{zoo}_{key}.png"
    fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=110)
    ax.scatter(targets, guessed, s=6, alpha=0.6)
    low = float(min(targets.min(), guessed.min()))
    high = float(max(targets.max(), guessed.max()))
    ax.plot([low, high], [low, high], color="grey", lw=0.8)
    ax.set_xlabel(f"true {run.result['target']}")
    ax.set_ylabel("predicted")
    split, seed = run_id(run)
    ax.set_title(f"{zoo} {name}\nsplit {split}, seed {seed}: τ {run.result['kendall_tau']:.3f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return zoo, name, path


def lever_section(root: Path, defaults: list[Run], resamples: int) -> list[str]:
    """One row per setting, zoo and predictor: the defaults first, then each lever."""
    lines = [
        "| setting | zoo | predictor | overrides | validation τ | test τ |",
        "|---|---|---|---|---|---|",
    ]
    fixed = ("seed=", "split_seed=", "zoo=", "model=", "hydra.")
    settings = [("defaults", defaults)]
    settings += [(p.name, load_results(p)) for p in sorted(root.iterdir()) if p.is_dir()]
    rows = []
    for name, results in settings:
        groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for run in results:
            groups[(run.result["zoo"], row_key(run.result))].append(run)
        rows += [(zoo, key, name, runs) for (zoo, key), runs in groups.items()]
    rows.sort(key=lambda row: rank(row[1]))
    rows.sort(key=lambda row: row[0], reverse=True)  # stable: rnn, then cnn
    value = lambda runs, field: [r.result[field] for r in runs if r.result.get(field) is not None]
    for zoo, key, name, runs in rows:
        changed = {o for run in runs for o in overrides(run.directory) if not o.startswith(fixed)}
        shown = " ".join(f"`{c}`" for c in sorted(changed)) or "—"
        lines.append(
            f"| {name} | {zoo} | {row_name(key)} | {shown} | "
            f"{fmt(value(runs, 'validation_tau'))} | {fmt(value(runs, 'kendall_tau'))} |"
        )
    # per zoo and predictor, the setting of best mean validation τ, and its test τ
    best: dict[tuple[str, str], tuple[float, str, list[Run]]] = {}
    for zoo, key, name, runs in rows:
        val = value(runs, "validation_tau")
        if val and ((zoo, key) not in best or statistics.fmean(val) > best[(zoo, key)][0]):
            best[(zoo, key)] = (statistics.fmean(val), name, runs)
    lines += [
        "",
        "Each predictor with the setting of its best mean validation τ:",
        "",
        "| zoo | predictor | setting | test τ (runs) |",
        "|---|---|---|---|",
    ]
    chosen: dict[str, dict[str, list[Run]]] = defaultdict(dict)
    for (zoo, key), (_, name, runs) in best.items():
        lines.append(f"| {zoo} | {row_name(key)} | {name} | {fmt(value(runs, 'kendall_tau'))} |")
        chosen[zoo][key] = runs
    lines += ["", "| zoo | difference | Δτ [95% interval] | split seeds | verdict |"]
    lines += ["|---|---|---|---|---|"]
    for zoo, keys in chosen.items():
        problem = zoo_description(next(iter(keys.values()))[0]).get("problem")
        lines += wanted_lines(zoo, problem, keys, resamples)
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoos", nargs="+", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--levers", type=Path)
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--out", type=Path, default=Path("docs/weight_space.md"))
    args = parser.parse_args()
    results = load_results(args.results)
    if not results:
        raise SystemExit(f"no result.json under {args.results}")
    first = results[0].result
    env = first.get("environment", {})
    commits = sorted({r.result.get("environment", {}).get("commit") or "?" for r in results})
    budget = first["config"]
    splits = sorted({split_of(r.result) for r in results})
    lines = [
        "# Predicting a network's test accuracy from its weights",
        "",
        "Generated by `scripts/weight_space_page.py` from the runs' own files; do not edit. "
        f"Source commit of the runs: {', '.join(commits)}; jax {env.get('jax', '?')} on "
        f"{env.get('cpus', '?')} CPU cores ({env.get('device', '?')}).",
        "",
        "Each predictor reads a trained network's weights (per-tensor standardised with the "
        "train split's statistics) and predicts its test metric; it trains on the train split "
        "(MSE on the standardised target, AdamW), keeps the epoch of best validation Kendall τ, "
        "and is scored once on the held-out test split. Every run checks that its trained "
        "predictor is invariant: the largest change of a test prediction when each test network "
        "is permuted at random by an element of the predictor's group is the *invariance "
        "error*. The group is the zoo's spec (NP: hidden neurons and the axes permuted by "
        "choice: input features, tokens, classes) or its hidden neurons alone (HNP, "
        "`model.symmetry=hnp`, the by-choice axes read as channels); STATNN's per-tensor "
        "statistics are invariant to every permutation of a tensor. Deep Sets (per tensor) "
        "pools each tensor separately and concatenates, a learned STATNN; Deep Sets (single "
        "set), the papers' kind, pools every entry of every tensor in one mean. "
        "*hyperparameters only* reads no weight: an MLP on the zoo's stored training "
        "hyperparameters, the part of the target visible without the weights.",
        "",
        "## Zoos",
        "",
    ]
    for run in args.zoos:
        lines += zoo_section(run)
    lines += [
        "## Kendall τ, R² and mean absolute error on the held-out split",
        "",
        f"Split {budget['split']} (train / validation / test), split seeds {splits}; "
        f"training: {budget['fit']} (each run's own in its `result.json`). Mean ± standard "
        "error over runs (split seeds × training seeds; count in brackets): the split seed "
        "sets which networks train, validate and test, the same for every predictor; the "
        "training seed sets the predictor's init and minibatch order. *dropped*: networks "
        "left out before the split, with non-finite weights (diverged) + a non-finite target.",
        "",
    ]
    lines += tau_section(results, args.out.parent / "weight_space", args.out, args.resamples)
    if args.levers and args.levers.is_dir():
        lines += [
            "## Settings tried",
            "",
            "One change at a time against the defaults, chosen on validation τ only:",
            "",
            *lever_section(args.levers, results, args.resamples),
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

"""``lopt-train``: meta-train a learned optimizer from the command line (a Hydra app).

    lopt-train experiment=smoke                          # seconds
    lopt-train experiment=mlp lopt=nfn seed=1            # the paper's MLP setting
    lopt-train -m experiment=smoke lopt=unf,deepsets     # a sweep, one directory per run
    lopt-train experiment=mlp hydra.run.dir=runs/a resume=true   # continue runs/a
    lopt-train experiment=mlp devices=4 population=32    # 16 pairs over 4 devices
    srun lopt-train experiment=mlp devices=all hydra.run.dir=runs/$SLURM_JOB_ID  # many hosts

A run directory receives ``config.yaml`` (the resolved config), ``metrics.jsonl`` and
``metrics.csv`` (one record per log interval and per validation), ``checkpoints/`` (the whole
``MetaState`` and the best theta so far), ``validation/reference.json`` (the initial theta's
and a tuned Adam's validation), and at the end ``optimizer/`` (the best theta by validation,
:func:`lopt.learned.save_optimizer` format), ``optimizer_last/`` (the last theta),
``loss.png`` and ``summary.json``.

Every process of a multi-process run (``distributed.*``, :mod:`lopt.distributed`) runs the
same command in the same run directory: each advances the particles on its own devices, all
write and restore the checkpoints together, and process 0 alone logs and writes the files.
"""

from __future__ import annotations

import logging
import math
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import hydra
import jax
import jax.numpy as jnp
import numpy as np
from hydra.core.hydra_config import HydraConfig
from jax.sharding import Mesh
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from lopt.checkpoint import Checkpointer, CheckpointError
from lopt.cli import help as cli_help  # noqa: F401  (registers the resolver of --help)
from lopt.cli import rundir, schema
from lopt.cli.common import (
    RunError,
    build_logger,
    build_parts,
    config_differences,
    enable_compilation_cache,
    to_container,
    write_json,
    write_text,
)
from lopt.cli.run_validation import (
    LAST_OPTIMIZER_DIR,
    VALIDATION_KEYS,
    RunState,
    Validation,
    fresh_run_state,
    keep_best,
    prepare_validation,
    validation_record,
    validation_settings,
    validation_summary,
)
from lopt.distributed import (
    any_process,
    check_agree,
    check_population_divides,
    initialize,
    is_main_process,
    particle_mesh,
    settings_from,
    to_host,
)
from lopt.evaluation.validation import Reference
from lopt.learned import save_optimizer
from lopt.loggers import Logger, MetricsFiles, null_logger, progress_bar
from lopt.meta import (
    LoopHooks,
    MetaState,
    MetaTrainer,
    interval_means,
    make_meta_trainer,
    outer_loop,
)
from lopt.provenance import environment

log = logging.getLogger("lopt.train")

CHECKPOINT_DIR = "checkpoints"
OPTIMIZER_DIR = "optimizer"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "loss.png"


def check_compatible(saved: dict, current: dict) -> None:
    """Raises :class:`RunError` unless two run configs describe the same trajectory
    (they may differ only in :data:`lopt.cli.schema.RUN_CONTROL_KEYS`)."""
    strip = lambda c: {k: v for k, v in c.items() if k not in schema.RUN_CONTROL_KEYS}
    differences = config_differences(strip(saved), strip(current))
    if differences:
        listed = "\n  ".join(differences)
        raise RunError(
            "cannot resume: the checkpoint was written with a different configuration "
            f"(checkpoint -> now):\n  {listed}\nResume with the same settings (only "
            f"{', '.join(schema.RUN_CONTROL_KEYS)} may change) or start a new run directory."
        )


def _check_counts(config: dict) -> None:
    for key, low in (
        ("steps", 1),
        ("log_every", 1),
        ("checkpoint_every", 0),
        ("keep_checkpoints", 1),
    ):
        if config[key] < low:
            raise RunError(f"{key} must be >= {low}, got {config[key]}")


def initial_state(
    trainer: MetaTrainer, checkpoints: Checkpointer, config: dict, mesh: Mesh | None = None
) -> tuple[MetaState, bool]:
    """A fresh state, or the latest checkpoint's when ``config["resume"]``.

    Returns:
        The state and whether it was restored.

    Raises:
        RunError: resume without a checkpoint, a fresh start over existing checkpoints, or
            a checkpoint written with another configuration or on another ``mesh``.
        CheckpointError: a corrupt checkpoint or one that does not fit the run.
    """
    key = jax.random.PRNGKey(config["seed"])
    latest = checkpoints.latest_step()
    if not config["resume"]:
        if latest is not None:
            raise RunError(
                f"{checkpoints.directory} already holds checkpoints (latest step {latest}); "
                "pass resume=true to continue that run, or choose a new run directory "
                "(hydra.run.dir=...)"
            )
        return fresh_run_state(trainer.init(key)), False
    if latest is None:
        raise RunError(
            f"resume=true but there is no checkpoint in {checkpoints.directory}; point "
            "hydra.run.dir at the directory of the run to continue, or drop resume=true"
        )
    saved = checkpoints.metadata(latest).get("config") or {}
    check_compatible(saved.get("run", {}), config)
    check_same_topology(saved.get("topology", SINGLE_DEVICE), topology(mesh))
    like = jax.eval_shape(lambda k: fresh_run_state(trainer.init(k)), key)
    state = checkpoints.restore(latest, like=like)
    return state._replace(meta=trainer.place(state.meta)), True


def _checkpoint_config(config: dict, parts: Any, mesh: Mesh | None) -> dict:
    return {
        "run": config,
        "optimizer": dict(parts.opt.config),
        "task": parts.task.name,
        "topology": topology(mesh),
    }


SINGLE_DEVICE = {"devices": 1, "processes": 1}
"""The topology of checkpoints that record none (written before runs could use a mesh)."""


def topology(mesh: Mesh | None) -> dict[str, int]:
    """The devices and processes a population split over ``mesh`` uses (None: one device)."""
    if mesh is None:
        return dict(SINGLE_DEVICE)
    processes = {device.process_index for device in mesh.devices.flat}
    return {"devices": int(mesh.devices.size), "processes": len(processes)}


def check_same_topology(saved: dict, current: dict) -> None:
    """Refuses to resume on another number of devices or processes.

    The particles' reductions run in another order over another mesh, so such a resume
    could not continue the run bit for bit.
    """
    if saved != current:
        raise RunError(
            f"cannot resume: the checkpoint was written with its population split over "
            f"{saved['devices']} device(s) in {saved['processes']} process(es), this run has "
            f"{current['devices']} in {current['processes']}; a run continues bit for bit "
            "only on the same topology: set devices= (and the processes) as when it started"
        )


def particle_mesh_for(config: dict, parts: Any) -> Any:
    """The mesh of ``config["devices"]`` the estimator's particle groups are split over
    (None: one device), refusing before any work a population that does not split."""
    try:
        mesh = particle_mesh(config["devices"], config["mesh_axis"])
    except ValueError as err:
        raise RunError(str(err)) from None
    if mesh is None:
        return None
    groups = parts.estimator.config.get("num_pairs") or parts.estimator.config.get("num_particles")
    if not parts.estimator.particle_fields or not groups:
        raise RunError(
            f"estimator {parts.estimator.config.get('name')} keeps no per-particle state to "
            f"split over {mesh.devices.size} devices; use devices=1 with it"
        )
    pairs = "num_pairs" in parts.estimator.config
    what = f"population={config['population']}" + (f" ({groups} pairs)" if pairs else "")
    try:
        check_population_divides(groups, mesh, config["mesh_axis"], what)
    except ValueError as err:
        raise RunError(str(err)) from None
    return mesh


def plot_losses(
    records: list[dict], path: Path, title: str, reference: Reference | None = None
) -> Path:
    """Saves meta-loss and meta-objective against the outer step as a PNG; with a
    validation ``reference``, a third panel shows the validation loss with the initial
    theta's and the reference Adam's levels as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    panels = 3 if reference is not None else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    for axis, key, label in (
        (axes[0], "meta_loss", "mean inner training loss"),
        (axes[1], "objective", "meta-objective"),
    ):
        axis.plot(steps, [r.get(key, math.nan) for r in records], lw=1.5)
        axis.set_xlabel("outer step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    if reference is not None:
        axis = axes[2]
        key = "val_final_loss_gmean"
        validated = [r for r in records if math.isfinite(r.get(key, math.nan))]
        theta0, adam = reference.theta0.score(), reference.adam.score()
        axis.plot(
            [0] + [r["step"] for r in validated],
            [theta0] + [r[key] for r in validated],
            marker="o",
            ms=3,
            lw=1.5,
            label="theta",
        )
        axis.axhline(theta0, color="tab:gray", ls="--", label="theta0")
        axis.axhline(
            adam, color="tab:red", ls=":", label=f"Adam (lr {reference.adam_learning_rate:g})"
        )
        levels = [theta0, adam] + [r[key] for r in validated]
        if all(v > 0 and math.isfinite(v) for v in levels):
            axis.set_yscale("log")
        axis.set_xlabel("outer step")
        axis.set_ylabel("validation final training loss\n(geometric mean over seeds)")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _summary(
    records: list[dict], config: dict, parts: Any, start: int, seconds: float, measured_on: dict
) -> dict:
    finite = lambda key: [r[key] for r in records if math.isfinite(r.get(key, math.nan))]
    losses, rates = finite("meta_loss"), finite("inner_steps_per_sec")
    return {
        "name": config["name"],
        "task": parts.task.name,
        "optimizer": parts.opt.config.get("name"),
        "estimator": parts.estimator.config.get("name"),
        "seed": config["seed"],
        "steps": records[-1]["step"] if records else start,
        "resumed_from_step": start or None,
        "initial_meta_loss": losses[0] if losses else None,
        "final_meta_loss": losses[-1] if losses else None,
        "best_meta_loss": min(losses) if losses else None,
        "num_nonfinite": int(sum(r.get("num_nonfinite", 0) for r in records)),
        "num_skipped": int(sum(r.get("skipped", 0) for r in records)),
        "inner_steps_per_sec": statistics.median(rates) if rates else None,
        "wall_time_sec": round(seconds, 2),
        "optimizer_dir": OPTIMIZER_DIR,  # relative to the run directory, like every path here
        "environment": measured_on,
    }


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Runs (or resumes) the meta-training ``cfg`` describes, writing into ``run_dir``.

    In a multi-process run every process calls this with the same config and directory;
    each runs its own particles, and process 0 alone logs and writes the run's files.

    Returns:
        The summary (also written to ``run_dir/summary.json``).

    Raises:
        RunError, CheckpointError: the run cannot start; nothing in ``run_dir`` was changed.
    """
    begin = time.perf_counter()
    measured_on = environment()  # the source's commit as the run starts, before any edit
    run_dir = Path(run_dir).absolute()
    config = resolved_config(cfg)
    parts = build_parts(config)
    mesh = particle_mesh_for(config, parts)
    check_same_run_dir(run_dir)
    trainer = build_trainer(config, parts, mesh)
    checkpoints = Checkpointer(run_dir / CHECKPOINT_DIR, max_to_keep=config["keep_checkpoints"])
    checkpoint_config = _checkpoint_config(config, parts, mesh)
    try:
        state, resumed = initial_state(trainer, checkpoints, config, mesh)
        start = int(state.meta.step)
        # Nothing is written before this point: a run that cannot start changes nothing.
        rundir.accept(run_dir, cfg, write=is_main_process())
        files, logger = _open_outputs(run_dir, config, resumed, start)
        log.info(
            "%s %s on %s: %s, %d inner steps per outer step; run dir %s",
            f"resuming from step {start}:" if resumed else "meta-training",
            parts.opt.config.get("name"),
            parts.task.name,
            parts.estimator.config.get("name"),
            trainer.inner_steps_per_step,
            run_dir,
        )
        state, validation = _start_validation(config, parts, run_dir, trainer, state, resumed)
        with StopRequest() as stop, _progress_bar(config, state) as bar:
            hooks = _run_hooks(
                config, checkpoints, files, logger, checkpoint_config, validation, stop, bar
            )
            state = _loop(trainer, state, config, hooks)
        if checkpoints.latest_step() != int(state.meta.step):
            checkpoints.save(int(state.meta.step), state, checkpoint_config)
    finally:
        checkpoints.close()
    files.close()
    optimizer_dir = _save_results(state, files.records, config, parts, run_dir, validation)
    summary = _summary(
        files.records,
        config,
        parts,
        start if resumed else 0,
        time.perf_counter() - begin,
        measured_on,
    )
    summary["interrupted_by"] = None if stop.signal is None else signal.Signals(stop.signal).name
    if validation is not None:
        validated = [r for r in files.records if math.isfinite(r.get("val_final_loss", math.nan))]
        summary["validation"] = validation_summary(
            state, validation.reference, validated, validation.metric
        )
    _publish(summary, run_dir, logger, optimizer_dir, parts)
    return summary


def build_trainer(config: dict, parts: Any, mesh: Mesh | None) -> MetaTrainer:
    """The run's meta-trainer, its particle groups split over ``mesh`` (None: one device)."""
    return make_meta_trainer(
        parts.task,
        parts.opt,
        parts.estimator,
        parts.outer_opt,
        schedule=parts.schedule,
        objective=parts.objective,
        mesh=mesh,
        particle_axis=None if mesh is None else config["mesh_axis"],
    )


def _publish(summary: dict, run_dir: Path, logger: Logger, optimizer_dir: Path, parts: Any) -> None:
    """Writes ``summary.json`` (process 0), hands the optimizer and the summary to the
    logger, and logs the summary and the run's health."""
    if is_main_process():
        write_json(run_dir / SUMMARY_FILE, summary)
    logger.log_optimizer(optimizer_dir)
    logger.finish(summary)
    shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in summary.items()}
    shown["optimizer_dir"] = run_dir / OPTIMIZER_DIR
    shown.pop("validation", None)
    shown.pop("environment", None)
    log.info("summary:\n%s", "\n".join(f"  {k:20s} {v}" for k, v in shown.items()))
    _report_health(summary, parts)


def resolved_config(cfg: DictConfig) -> dict:
    """``cfg`` as a checked plain dict.

    Raises:
        RunError: a key the schema does not know, a value it rejects, a count out of range,
            or ``start_at_tuned`` without validation.
    """
    unknown = schema.unknown_keys(cfg)
    if unknown:
        raise RunError(
            f"unknown config keys {unknown}: the schema (lopt.cli.schema.TrainConfig and the "
            "groups' schemas) has no such options; `lopt-train --cfg job` lists the known ones"
        )
    try:
        config = to_container(cfg)
    except Exception as err:
        raise RunError(f"invalid config: {err}") from err
    _check_counts(config)
    if config["start_at_tuned"] and validation_settings(config) is None:
        raise RunError("start_at_tuned needs validation (validation.every > 0)")
    return config


def check_same_run_dir(run_dir: Path) -> None:
    """Refuses a multi-process run whose processes would write into different directories
    (Hydra's default directory carries the start time, which the processes do not share).
    """
    try:
        check_agree(str(run_dir), "the run directory")
    except ValueError as err:
        raise RunError(
            f"{err}; give every process the same hydra.run.dir=..., on a filesystem they share"
        ) from None


def _open_outputs(
    run_dir: Path, config: dict, resumed: bool, start: int
) -> tuple[MetricsFiles, Logger]:
    """The run's ``config.yaml``, metrics files and logger; on processes other than the
    first, an in-memory record of the metrics and no logger, and nothing is written."""
    if not is_main_process():
        return MetricsFiles(run_dir, write=False), null_logger()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(config)))
    logger: Logger = build_logger(
        config["logger"], run_dir=run_dir, run_config=config, name=config["name"], resume=resumed
    )
    return MetricsFiles(run_dir, resume_step=start if resumed else None), logger


def _start_validation(
    config: dict, parts: Any, run_dir: Path, trainer: MetaTrainer, state: RunState, resumed: bool
) -> tuple[RunState, Validation | None]:
    """The run's validation (None when off) and the state to start from: a new run's best
    score is its initial theta's, and with ``start_at_tuned`` theta starts at the tuned
    step size."""
    settings = validation_settings(config)
    if settings is None:
        return state, None
    key = jax.random.PRNGKey(config["seed"])
    initial = (lambda: trainer.init(key).theta) if resumed else (lambda: state.meta.theta)
    validation, theta0 = prepare_validation(
        config, parts, run_dir, settings, lambda: to_host(initial()), write=is_main_process()
    )
    if not resumed:
        if config["start_at_tuned"]:
            state = fresh_run_state(trainer.init(key, theta0))
        theta0_score = np.float32(validation.reference.theta0.score(validation.metric))
        state = state._replace(best_score=jnp.asarray(theta0_score, jnp.float32))
    return state, validation


def _save_results(
    state: RunState,
    records: list[dict],
    config: dict,
    parts: Any,
    run_dir: Path,
    validation: Validation | None,
) -> Path:
    """Writes the optimizers (the best by validation in ``optimizer/`` and the last in
    ``optimizer_last/``; without validation the last in ``optimizer/``) and the loss plot;
    only process 0 writes. Returns the ``optimizer/`` directory."""
    last_theta = to_host(state.meta.theta)
    best_theta = last_theta if validation is None else to_host(state.best_theta)
    optimizer_dir = run_dir / OPTIMIZER_DIR
    if not is_main_process():
        return optimizer_dir
    save_optimizer(optimizer_dir, parts.opt, best_theta)
    if validation is not None:
        save_optimizer(run_dir / LAST_OPTIMIZER_DIR, parts.opt, last_theta)
    if records:
        plot_losses(
            records,
            run_dir / PLOT_FILE,
            f"{config['name']}: {parts.opt.config.get('name')} on {parts.task.name}",
            None if validation is None else validation.reference,
        )
    return optimizer_dir


def _report_health(summary: dict, parts: Any) -> None:
    """Says plainly, at the end, whether the run learned and whether particles diverged."""
    diverged = summary["num_nonfinite"]
    if diverged:
        bound = parts.objective.max_loss
        log.warning(
            "%d particle groups diverged (non-finite loss%s) and were reset; if this is "
            "frequent the learned optimizer's steps are too large for the task",
            diverged,
            "" if bound is None else f", or loss above {bound:.3g}",
        )
    if "validation" in summary:
        verdict = summary["validation"]["verdict"]
        (log.info if summary["validation"]["improved_on_theta0"] else log.warning)(
            "validation: %s", verdict
        )


class StopRequest:
    """Turns SIGINT (Ctrl-C) and SIGTERM into a request to stop after the current outer
    step, so the run can write a checkpoint and its summary; a second signal interrupts at
    once. Outside the ``with`` block the previous handlers are back.

    Attributes:
        signal: the first signal received, or None.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: Any) -> None:
        del frame
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = number
        log.warning(
            "%s received: finishing the current outer step, then writing a checkpoint and the "
            "summary (send it again to stop at once)",
            signal.Signals(number).name,
        )


def _progress_bar(config: dict, state: RunState) -> tqdm:
    """The run's progress bar over outer steps, starting at ``state``'s (on stderr, when it
    is a terminal)."""
    return progress_bar(
        enabled=config["progress"] and is_main_process(),
        total=config["steps"],
        initial=int(state.meta.step),
        unit="step",
        desc=config["name"],
        dynamic_ncols=True,
    )


def _loop(trainer: MetaTrainer, state: RunState, config: dict, hooks: LoopHooks) -> RunState:
    """Meta-trains from ``state`` to ``config["steps"]`` in the library's
    :func:`~lopt.meta.outer_loop`, a record holding its interval's means."""
    steps = config["steps"]

    def step(run: RunState) -> tuple[RunState, dict]:
        meta, metrics = trainer.step(run.meta)
        return run._replace(meta=meta), metrics

    state, _ = outer_loop(
        step,
        state,
        int(state.meta.step),
        steps,
        inner_steps_per_step=trainer.inner_steps_per_step,
        log_due=lambda done: done % config["log_every"] == 0 or done == steps,
        reducer=interval_means(),
        hooks=hooks,
    )
    return state


def _run_hooks(
    config: dict,
    checkpoints: Checkpointer,
    files: MetricsFiles,
    logger: Logger,
    checkpoint_config: dict,
    validation: Validation | None,
    stop: StopRequest,
    bar: tqdm,
) -> LoopHooks:
    """The outer loop's hooks of a ``lopt-train`` run: ``stop`` ends it after the current
    step, ``bar`` shows progress, ``validation`` keeps the best theta, every record goes to
    ``files`` and ``logger``, and every ``checkpoint_every`` steps to ``checkpoints``."""
    every = config["checkpoint_every"]
    postfix: dict[str, str] = {}

    def validate(done: int, run: RunState) -> tuple[RunState, dict[str, float]]:
        scores = validation.validate(to_host(run.meta.theta))
        fields = validation_record(scores, validation.reference, validation.metric)
        postfix.update(
            val_vs_adam=f"{fields['val_vs_adam']:.3g}",
            val_vs_theta0=f"{fields['val_vs_theta0']:.3g}",
        )
        return keep_best(run, scores, done, validation.metric), fields

    def on_log(done: int, record: dict[str, float]) -> None:
        files.write(record)
        logger.log_metrics(done, record)
        rate = record["inner_steps_per_sec"]
        postfix.update(
            meta_loss=f"{record['meta_loss']:.4f}",
            inner_steps_s=f"{rate:.0f}" if math.isfinite(rate) else "-",
        )
        bar.set_postfix(postfix)

    def after_step(done: int, run: RunState) -> None:
        if every and done % every == 0:
            checkpoints.save(done, run, checkpoint_config)

    return LoopHooks(
        # Every process stops after the same step, whichever of them got the signal.
        stop_requested=lambda: any_process(stop.signal is not None),
        on_step=lambda done: bar.update(1),
        validate=None if validation is None else validate,
        validate_every=0 if validation is None else validation.every,
        validation_keys=VALIDATION_KEYS,
        on_log=on_log,
        after_step=after_step,
    )


def _interrupt(number: int, frame: Any) -> None:
    del number, frame
    raise KeyboardInterrupt


def join_processes(cfg: DictConfig) -> None:
    """Joins the other processes of a multi-process run (``cfg.distributed``), before
    anything starts JAX's backend; the processes but the first then log warnings only.

    Raises:
        RunError: settings that cannot describe a run (see
            :func:`lopt.distributed.settings_from`).
    """
    distributed = OmegaConf.to_container(cfg.get("distributed") or {}, resolve=True)
    try:
        settings = settings_from(distributed)
    except ValueError as err:
        raise RunError(str(err)) from None
    initialize(settings)
    if not is_main_process():
        logging.getLogger("lopt").setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path="pkg://lopt.configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Entry point of ``lopt-train``; returns what a sweeper should minimise: the best
    validation loss, or the final meta-loss when validation is off."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    for noisy in ("jax", "absl"):  # Hydra logs INFO to the console; these are not for users
        logging.getLogger(noisy).setLevel(logging.WARNING)
    enable_compilation_cache(cfg.compilation_cache)
    signal.signal(signal.SIGTERM, _interrupt)  # while starting, like Ctrl-C
    try:
        join_processes(cfg)
        with rundir.run_directory(run_dir, cfg):
            summary = train(cfg, run_dir)
    except (RunError, CheckpointError) as err:
        print(f"lopt-train: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(
            "lopt-train: interrupted while starting (compiling, or validating theta0); no "
            f"checkpoint of this process was written in {run_dir}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    if summary["interrupted_by"] is not None:
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
        overrides = [o for o in overrides if not o.startswith("hydra.run.dir=")]
        command = " ".join(["lopt-train", *overrides, f"hydra.run.dir={run_dir}", "resume=true"])
        print(
            f"lopt-train: stopped by {summary['interrupted_by']} at outer step "
            f"{summary['steps']}; the checkpoint and summary are written. To continue:\n"
            f"  {command}",
            file=sys.stderr,
        )
        raise SystemExit(128 + int(getattr(signal, summary["interrupted_by"])))
    loss = summary.get("final_meta_loss")
    if "validation" in summary:
        loss = summary["validation"]["best_score"]
    return float(loss) if loss is not None and np.isfinite(loss) else None


if __name__ == "__main__":
    main()

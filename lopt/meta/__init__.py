"""Meta-training: populations of inner runs, meta-gradient estimators, the outer loop."""

from lopt.meta.base import EstimateInfo, Estimator
from lopt.meta.full_es import FullESState, full_es
from lopt.meta.loop import (
    LoopHooks,
    MetricsReducer,
    interval_means,
    last_step_metrics,
    outer_loop,
)
from lopt.meta.objective import MetaObjective, as_objective
from lopt.meta.outer import clip_by_global_norm, default_outer_optimizer, linear_warmup
from lopt.meta.pes import PESState, pes, truncated_es
from lopt.meta.population import (
    ParticleState,
    StepRecord,
    Unroller,
    make_unroller,
    train_step,
)
from lopt.meta.protocols import (
    LearnedOptimizerLike,
    TaskLike,
    WeightSpaceOptimizerLike,
    init_state,
)
from lopt.meta.ravel import FlatTheta, ravel_theta
from lopt.meta.schedules import (
    EpisodeSchedule,
    as_schedule,
    constant_length,
    log_uniform_length,
    schedule_from_config,
)
from lopt.meta.tbptt import TBPTTState, tbptt
from lopt.meta.trainer import (
    MetaState,
    MetaTrainer,
    make_meta_trainer,
    meta_train,
)

__all__ = [
    "EpisodeSchedule",
    "EstimateInfo",
    "Estimator",
    "FlatTheta",
    "FullESState",
    "LearnedOptimizerLike",
    "LoopHooks",
    "MetaObjective",
    "MetaState",
    "MetaTrainer",
    "MetricsReducer",
    "PESState",
    "ParticleState",
    "StepRecord",
    "TBPTTState",
    "TaskLike",
    "Unroller",
    "WeightSpaceOptimizerLike",
    "as_objective",
    "as_schedule",
    "clip_by_global_norm",
    "constant_length",
    "default_outer_optimizer",
    "full_es",
    "init_state",
    "interval_means",
    "last_step_metrics",
    "linear_warmup",
    "log_uniform_length",
    "make_meta_trainer",
    "make_unroller",
    "meta_train",
    "outer_loop",
    "pes",
    "ravel_theta",
    "schedule_from_config",
    "tbptt",
    "train_step",
    "truncated_es",
]

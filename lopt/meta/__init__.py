"""Meta-training: populations of inner runs, meta-gradient estimators, the outer loop."""

from lopt.meta.base import EstimateInfo, Estimator
from lopt.meta.full_es import FullESState, full_es
from lopt.meta.objective import MetaObjective, as_objective
from lopt.meta.pes import PESState, pes, truncated_es
from lopt.meta.population import (
    ParticleState,
    StepRecord,
    Unroller,
    make_unroller,
    train_step,
)
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
    default_outer_optimizer,
    make_meta_trainer,
    meta_train,
)

__all__ = [
    "EpisodeSchedule",
    "EstimateInfo",
    "Estimator",
    "FullESState",
    "MetaObjective",
    "MetaState",
    "MetaTrainer",
    "PESState",
    "ParticleState",
    "StepRecord",
    "TBPTTState",
    "Unroller",
    "as_objective",
    "as_schedule",
    "constant_length",
    "default_outer_optimizer",
    "full_es",
    "log_uniform_length",
    "make_meta_trainer",
    "make_unroller",
    "meta_train",
    "pes",
    "schedule_from_config",
    "tbptt",
    "train_step",
    "truncated_es",
]

"""Learned optimizers: the UNF paper's update rule, hand-designed baselines, optax export.

>>> opt = make_optimizer("unf", spec)           # or unf_deep, nfn, deepsets, sgdm, adam
>>> theta = opt.init_meta(key)
>>> state = opt.init(params)
>>> updates, state = opt.update(theta, grads, state, params)
>>> save_optimizer("my_opt", opt, theta)
>>> optimizer = load_optimizer("my_opt", spec=spec)  # an optax transformation
"""

from lopt.learned import features
from lopt.learned.base import LearnedOptimizer
from lopt.learned.baselines import AdamState, SGDMState, make_adam, make_adam_cosine, make_sgdm
from lopt.learned.export import as_optax
from lopt.learned.features import (
    FEATURE_DECAYS,
    NUM_FEATURES,
    TIMESCALES,
    normalize,
    time_features,
    weight_space_features,
)
from lopt.learned.fit import check_theta
from lopt.learned.nf_optimizer import BACKBONES, NFOptState, make_nf_optimizer, meta_parameters
from lopt.learned.optimizers import (
    LEARNED,
    OPTIMIZERS,
    hyperparameters,
    make_optimizer,
    optimizer_from_config,
)
from lopt.learned.serialization import (
    FORMAT_VERSION,
    SavedOptimizerError,
    load_learned_optimizer,
    load_optimizer,
    read_config,
    read_theta,
    save_optimizer,
)

__all__ = [
    "BACKBONES",
    "FEATURE_DECAYS",
    "FORMAT_VERSION",
    "LEARNED",
    "NUM_FEATURES",
    "OPTIMIZERS",
    "TIMESCALES",
    "AdamState",
    "LearnedOptimizer",
    "NFOptState",
    "SGDMState",
    "SavedOptimizerError",
    "as_optax",
    "check_theta",
    "features",
    "hyperparameters",
    "load_learned_optimizer",
    "load_optimizer",
    "make_adam",
    "make_adam_cosine",
    "make_nf_optimizer",
    "make_optimizer",
    "make_sgdm",
    "meta_parameters",
    "normalize",
    "optimizer_from_config",
    "read_config",
    "read_theta",
    "save_optimizer",
    "time_features",
    "weight_space_features",
]

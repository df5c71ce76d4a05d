"""The presets a study compares: optimizers that find minima of different flatness, each
with literature defaults and its source (docs/optimizers.md has the full table).

`sgd` and `adam` are registered in toroid.optim.registry; this module adds the large-batch
baseline and the flatness-seeking optimizers. Every preset is a registered name, so it
works in `fit(optimizer=...)`, in `toroid train --optimizer` and in study configs, and any
hyperparameter can be overridden there."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import ParamsT

from toroid.optim.entropy_sgd import EntropySGD
from toroid.optim.registry import optimizer_entry, register_optimizer
from toroid.optim.replicated import ReplicatedSGD
from toroid.optim.sam import SAM

PRESETS: tuple[str, ...] = ("sgd", "sgd-large-batch", "adam", "sam", "esgd", "rsgd")
# Gradient evaluations per step of each preset, for comparing compute budgets.
GRAD_EVALS_PER_STEP: dict[str, str] = {
    "sgd": "1",
    "sgd-large-batch": "1",
    "adam": "1",
    "sam": "2",
    "esgd": "L",
    "rsgd": "y",
}


def _sgd_large_batch(params: ParamsT, **hparams: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, **hparams)


def _sam(
    params: ParamsT, *, base: str, rho: float, adaptive: bool, **base_hparams: Any
) -> torch.optim.Optimizer:
    entry = optimizer_entry(base)
    return SAM(
        params,
        base=lambda base_params: entry.factory(base_params, **base_hparams),
        rho=rho,
        adaptive=adaptive,
    )


def _esgd(params: ParamsT, **hparams: Any) -> torch.optim.Optimizer:
    return EntropySGD(params, **hparams)


def _rsgd(params: ParamsT, **hparams: Any) -> torch.optim.Optimizer:
    return ReplicatedSGD(params, **hparams)


register_optimizer(
    "sgd-large-batch",
    _sgd_large_batch,
    defaults={"lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
    description="SGD with minibatches of 1024 and sgd's rate: the sharp-minimum baseline",
    source="Keskar et al. 2017: large batches (about 10% of the training set) find sharper "
    "minima that generalize worse; only the batch size differs from sgd",
    batch_size=1024,
)
register_optimizer(
    "sam",
    _sam,
    defaults={"base": "sgd", "rho": 0.05, "adaptive": False},
    description="sharpness-aware minimization around a base optimizer (any registered one; "
    "its hyperparameters are accepted too); adaptive=True is ASAM",
    source="Foret et al. 2021: rho 0.05 with SGD, momentum 0.9; ASAM (Kwon et al. 2021) "
    "uses a larger rho, e.g. 0.5",
    wraps=True,
)
register_optimizer(
    "esgd",
    _esgd,
    defaults={
        "lr": 1.0,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 0.0,
        "inner_lr": 0.1,
        "L": 5,
        "gamma0": 1e-4,
        "gamma1": 1.0,
        "noise": 1e-4,
        "alpha": 0.75,
    },
    description="Entropy-SGD: outer Nesterov step towards the average of an L-step Langevin "
    "chain coupled to the weights with gamma scoped from gamma0 to gamma1",
    source="Chaudhari et al. 2017: gamma0 1e-4, noise 1e-4, alpha 0.75, inner lr 0.1, outer "
    "lr 1 with Nesterov momentum 0.9; L 5 (paper: 20) and gamma1 1.0: toroid's choice",
)
register_optimizer(
    "rsgd",
    _rsgd,
    defaults={
        "y": 3,
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 0.0,
        "gamma0": 0.1,
        "gamma1": 100.0,
    },
    description="replicated SGD: y replicas on their own minibatches, coupled to a center "
    "(the output) with gamma scoped from gamma0 to gamma1; y times the cost of sgd",
    source="Baldassi et al. 2016 (robust ensemble, replicated gradient descent), Pittorino "
    "et al. 2021 (coupling scoped up during training); y 3, gamma0 0.1, gamma1 100 and "
    "sgd's rate: toroid's choice",
)

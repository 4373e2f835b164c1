"""The configuration of a training run: data, network size, SDE, parameterisation, optimiser.

The weights files of the embedded models carry it (as JSON), so a model is rebuilt from its
file alone; this module needs neither optax nor the training loop.
"""

from __future__ import annotations

import dataclasses

from .models.score import PARAMETERIZATIONS
from .models.unet import SIZES, DigitsUNet
from .sde import VESDE, VPSDE, FlowSDE, SubVPSDE

__all__ = ["TrainConfig", "SDES"]

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "flow": FlowSDE}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (a rerun must match it to resume)."""

    data: str = "digits"
    size: str = "medium"
    sde: str = "vp"
    parameterization: str = "eps"
    weighting: str = "simple"
    # parameterization "flow" trains by flow matching (jaxsde.training.flow_matching_loss) with
    # t "uniform" on [eps, T] or "logit_normal" (SD3's); the score losses sample t uniformly
    time_sampling: str = "uniform"
    steps: int = 20_000
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 500
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # True: the EMA is the normalised average of the trained weights, with no share of the random
    # initialisation (see jaxsde.training.ema_update); False: the plain EMA started at the init
    # (runs written before this field existed), which still holds ``ema_decay ** steps`` of it.
    ema_debias: bool = True
    sigma_data: float = 0.5
    seed: int = 0
    # Class-conditional training (None: unconditional). The network takes labels 0..num_classes,
    # num_classes being the null class; each training label is replaced by it with probability
    # label_dropout (classifier-free guidance needs the unconditional model too).
    num_classes: int | None = None
    label_dropout: float = 0.1

    def validate(self) -> None:
        if self.data != "digits":
            raise ValueError(f"unknown data {self.data!r}; available: 'digits'")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {sorted(SIZES)}")
        if self.sde not in SDES:
            raise ValueError(f"unknown sde {self.sde!r}; choose one of {sorted(SDES)}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {self.parameterization!r}; "
                             f"choose one of {PARAMETERIZATIONS}")
        if self.weighting not in ("simple", "likelihood"):
            raise ValueError(f"weighting must be 'simple' or 'likelihood', got {self.weighting!r}")
        if self.time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"time_sampling must be 'uniform' or 'logit_normal', got {self.time_sampling!r}")
        if self.parameterization == "flow" and self.weighting != "simple":
            raise ValueError("parameterization 'flow' trains by flow matching, unweighted: use weighting='simple'")
        if self.parameterization != "flow" and self.time_sampling != "uniform":
            raise ValueError("time_sampling applies to parameterization 'flow' only (the score losses sample t "
                             "uniformly)")
        if self.parameterization == "v" and self.sde == "flow":
            raise ValueError("parameterization 'v' assumes alpha^2 + sigma^2 = 1; on sde 'flow' a velocity model "
                             "is parameterization 'flow'")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or self.num_classes < 2):
            raise ValueError(f"num_classes must be an integer >= 2 or None, got {self.num_classes!r}")
        if self.num_classes is not None and self.data == "digits" and self.num_classes != 10:
            raise ValueError(f"num_classes must be 10 for data 'digits' (labels 0..9), got {self.num_classes}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout!r}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of ``dataclasses.asdict`` after a JSON round trip (lists back to tuples)."""
        d = {"ema_debias": False, **d}  # a run or weights file from before the field: the plain EMA
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def make_sde(self):
        return SDES[self.sde]()

    def make_model(self) -> DigitsUNet:
        return DigitsUNet(**SIZES[self.size], num_classes=self.num_classes)

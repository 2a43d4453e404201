"""The training settings of a run (``TrainSettings``): the training keys of ``configs/encoders/<name>.yaml``,
overridable per run (``--train-option``) and per suite (``train_options``). Read by bench/train.py.

Stdlib only, so suites and options can be checked without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.config import ConfigError
from bench.registry import suggest

# The choices that training (TrainSettings) and pretraining (bench.pretrain.PretrainConfig) share.
MESSAGE_PASSING = ("auto", "dgl", "torch")  # bench.graphops' implementations
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainSettings:
    """The training keys of ``configs/encoders/<name>.yaml`` (read by bench/train.py)."""

    featurizer: str = "cgcnn"  # the reference atom input
    optimizer: str = "adamw"  # sgd | adam | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    # onecycle (stepped per batch) | cosine (per epoch, to final_lr_fraction) | step (per epoch: times lr_gamma
    # at each of lr_milestones, torch's MultiStepLR as in CGCNN's script) | none
    scheduler: str = "onecycle"
    pct_start: float = 0.3  # onecycle warm-up fraction
    final_lr_fraction: float = 0.01  # cosine: decay to this fraction of lr
    lr_milestones: tuple[int, ...] = ()  # step: 1-based epochs after which the rate is multiplied by lr_gamma
    lr_gamma: float = 0.1  # step
    loss: str = "mse"  # mse | l1
    batch_size: int = 64
    epochs: int = 300
    # Evaluate on symmetry-reduced graphs where the encoder supports it (bench.quotient): the same function,
    # equal up to float rounding, several times less work on crystals. Not part of a run's identity.
    symmetry_reduce: bool = True
    # Message-passing kernels (bench.graphops): auto = DGL's on CPU where dgl imports, plain torch elsewhere;
    # dgl | torch force one. The same function (float rounding only): not part of a run's identity.
    message_passing: str = "auto"
    # fp32, or bf16 autocast (bench.train) for the forward pass and the loss: changes the numbers, so it is part
    # of a run's identity (at fp32, its default, it stays out: earlier records keep their run ids).
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for key, allowed in (("optimizer", ("sgd", "adam", "adamw")),
                             ("scheduler", ("onecycle", "cosine", "step", "none")),
                             ("loss", ("mse", "l1")),
                             ("message_passing", MESSAGE_PASSING),
                             ("precision", PRECISIONS)):
            v = getattr(self, key)
            if v not in allowed:
                raise ConfigError(f"TrainSettings.{key}: " + suggest(v, list(allowed), key))
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1:
            raise ConfigError(f"TrainSettings: lr, batch_size and epochs must be positive ({self})")
        if any(m < 1 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(set(self.lr_milestones)):
            raise ConfigError(f"TrainSettings.lr_milestones must be increasing positive epochs, got {self.lr_milestones}")
        if self.scheduler == "step" and not self.lr_milestones:
            raise ConfigError("TrainSettings: scheduler 'step' needs lr_milestones (e.g. [100])")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"TrainSettings.lr_gamma must lie in (0, 1], got {self.lr_gamma}")

"""Base class of pretraining objectives and the one way to build one.

An objective is an ``nn.Module`` (so its heads are parameters the optimiser sees) registered with
``@register_objective("name")``. It declares a frozen dataclass ``Config`` (every option with its reference
default, checked strictly), ``default_encoder``, optionally ``default_encoder_options`` and
``default_featurizer``, and implements one method::

    def loss(self, encoder, batch) -> dict[str, torch.Tensor]   # a "total" key plus named parts

``__init__(self, config, dim)`` receives the parsed ``Config`` and the encoder's node-embedding width
(``encoder.embedding_dim``); build heads there. ``self.rng`` is a ``numpy.random.Generator`` the pretraining
loop reseeds every epoch (from the run seed and the epoch), so corruptions are reproducible and a resumed run
draws the same ones; use it for every random choice.

How the table is made is declared per objective, each defaulting to what its reference did (``bench/pretrain.py``
implements them; ``bench pretrain --selection/--extraction`` override):

- ``default_selection``: which epoch's model the table comes from: ``"validation"`` (lowest loss on a fixed,
  seeded 10 % of the corpus held out, with corruptions drawn once), ``"train-loss"`` (lowest mean training loss of
  an epoch) or ``"last"`` (the last epoch; the base default, crysbench's protocol);
- ``default_extraction``: ``"mean"`` (mean of the raw final node embeddings per element over the training
  corpus, then L2), ``"last-batch"`` (per element, L2 of its mean over the last training batch of the selected
  epoch that contains it, from that batch's training-mode forward pass; needs ``loss`` to set
  ``self.extraction_nodes``) or ``"uniform"`` (per-atom L2-normalised embeddings averaged, then L2; the base
  default);
- ``reference_epochs``: the pretraining budget when none is given.

``loss`` may set ``self.extraction_nodes`` to the (detached) node embeddings of the *clean* batch it encoded;
the loop reads it for ``"last-batch"`` extraction and clears it before every call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bench.config import from_dict, to_dict
from bench.registry import OBJECTIVES


class Objective(nn.Module):
    Config: ClassVar[type]
    default_encoder: ClassVar[str]
    default_encoder_options: ClassVar[dict[str, Any]] = {}
    default_featurizer: ClassVar[str] = "learned"
    default_selection: ClassVar[str] = "last"
    default_extraction: ClassVar[str] = "uniform"
    reference_epochs: ClassVar[int] = 10

    def __init__(self, config: Any, dim: int) -> None:
        super().__init__()
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.dim = int(dim)
        self.rng = np.random.default_rng(0)
        self.extraction_nodes: torch.Tensor | None = None

    def loss(self, encoder: nn.Module, batch: Any) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement loss(encoder, batch)")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        cfg = cls.Config() if dataclasses.is_dataclass(cls.Config) else None
        return {
            "default_encoder": getattr(cls, "default_encoder", None),
            "default_encoder_options": dict(getattr(cls, "default_encoder_options", {}) or {}),
            "default_featurizer": getattr(cls, "default_featurizer", "learned"),
            "default_selection": getattr(cls, "default_selection", "last"),
            "default_extraction": getattr(cls, "default_extraction", "uniform"),
            "reference_epochs": getattr(cls, "reference_epochs", 10),
            "options": to_dict(cfg) if cfg is not None else {},
        }


def check_objective_class(name: str, cls: type) -> None:
    """A clear error for a registered class that misses part of the contract."""
    problems = []
    cfg = getattr(cls, "Config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        problems.append("a dataclass `Config` (frozen, every field with a default)")
    if not isinstance(getattr(cls, "default_encoder", None), str):
        problems.append("a `default_encoder` string (a registered encoder name)")
    if not callable(getattr(cls, "loss", None)):
        problems.append("a `loss(self, encoder, batch)` method")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        problems.append("to be an nn.Module subclass (subclass bench.objectives.Objective)")
    if problems:
        raise TypeError(f"objective {name!r} ({cls!r}) needs " + "; ".join(problems))


def build_objective(name: str, options: dict[str, Any] | None, dim: int) -> Objective:
    """Objective ``name`` with ``options`` checked strictly against its ``Config``; heads sized for ``dim``."""
    cls = OBJECTIVES.get(name)
    check_objective_class(name, cls)
    cfg = from_dict(cls.Config, options, what=f"objective {name!r} options")
    return cls(cfg, dim)


def objective_config(name: str, options: dict[str, Any] | None) -> Any:
    cls = OBJECTIVES.get(name)
    check_objective_class(name, cls)
    return from_dict(cls.Config, options, what=f"objective {name!r} options")


def mean_pool(h: torch.Tensor, num_nodes: torch.Tensor) -> torch.Tensor:
    """Mean of each crystal's rows of ``h`` (N, d) -> (B, d); ``num_nodes`` (B,) atoms per crystal."""
    num_nodes = num_nodes.to(h.device)
    seg = torch.repeat_interleave(torch.arange(len(num_nodes), device=h.device), num_nodes)
    out = torch.zeros(len(num_nodes), h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, seg, h)
    return out / num_nodes.clamp(min=1).unsqueeze(1).to(h.dtype)

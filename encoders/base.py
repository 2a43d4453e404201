"""Encoder base class, output type, construction from options, parameter counting, and the reference
model + training settings of each encoder (``configs/encoders/<name>.yaml``).

An encoder maps a ``bench.graphs.Batch`` to per-atom embeddings and a per-graph prediction. Its atom input
always comes from a ``bench.featurizers.Featurizer`` (the axis the benchmark varies), never a hard-coded table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from bench.config import ConfigError, from_dict, load_yaml, to_dict
from bench.registry import ENCODERS, suggest
from bench.settings import TrainSettings  # noqa: F401  (re-exported: the training keys of the encoder yamls)


@dataclass(frozen=True)
class EncoderOutput:
    node: torch.Tensor  # (N, embedding_dim): final per-atom embeddings
    pred: torch.Tensor  # (B,): one scalar per graph


class Encoder(nn.Module):
    """Base for registered encoders. Subclasses set ``graph_spec``, ``Config`` and ``embedding_dim``."""

    graph_spec: ClassVar[str]
    Config: ClassVar[type]
    embedding_dim: int
    # True if ``forward`` uses ``batch.q``, the symmetry-reduced graphs (bench.quotient), when a batch has them:
    # only for encoders whose features are invariant functions of Z, distances and angles with sum/mean
    # aggregation (a direction-dependent encoder such as CartNet must not).
    supports_quotient: ClassVar[bool] = False

    def __init__(self, config: Any, featurizer: nn.Module) -> None:
        super().__init__()
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.featurizer = featurizer

    def reduced_graphs(self, batch: Any, atom_mask: torch.Tensor | None) -> Any:
        """The symmetry-reduced graphs to run on (``batch.q``, see bench/quotient.py), or None for the full ones:
        only for an encoder that supports them, and never with an ``atom_mask`` (a mask breaks the symmetry)."""
        q = getattr(batch, "q", None)
        return q if q is not None and self.supports_quotient and atom_mask is None else None

    def atom_input(self, batch: Any, atom_mask: torch.Tensor | None, reduced: Any = None) -> torch.Tensor:
        """Featurized atoms (N, featurizer.dim); rows of masked atoms replaced by zeros (no input mutated).
        With ``reduced`` (``reduced_graphs``), one row per atom class instead."""
        if reduced is not None:
            return self.featurizer(reduced.g.ndata["Z"])
        x = self.featurizer(batch.graph.ndata["Z"])
        if atom_mask is not None:
            if atom_mask.shape != (x.shape[0],) or atom_mask.dtype != torch.bool:
                raise ValueError(f"atom_mask must be a bool tensor of shape ({x.shape[0]},), got "
                                 f"{tuple(atom_mask.shape)} {atom_mask.dtype}")
            x = x.masked_fill(atom_mask.unsqueeze(-1), 0.0)
        return x

    def unused_parameter_names(self) -> set[str]:
        """Parameters kept for parity with the reference (state-dict layout, parameter count) whose output is
        never used, so they receive no gradient (e.g. the final edge update of the last layer)."""
        return set()

    @classmethod
    def reference_feature_dim(cls, config: Any | None = None) -> int:
        """Width of the reference atom input (used as the ``learned`` featurizer's default width)."""
        return 92

    @classmethod
    def describe(cls) -> dict[str, Any]:
        from bench.featurizers import build_featurizer

        cfg = cls.Config()
        feat = build_featurizer("learned", dim=cls.reference_feature_dim(cfg))
        model = cls(cfg, feat)
        return {
            "graph_spec": cls.graph_spec,
            "symmetry_reduced": cls.supports_quotient,
            "embedding_dim": model.embedding_dim,
            "options": to_dict(cfg),
            "parameters_at_defaults": count_parameters(model, include_featurizer=False),
        }


def count_parameters(model: nn.Module, *, trainable_only: bool = True, include_featurizer: bool = True) -> int:
    """Number of (trainable) parameters; ``include_featurizer=False`` leaves out the atom table."""
    feat = getattr(model, "featurizer", None)
    skip = {id(p) for p in feat.parameters()} if (feat is not None and not include_featurizer) else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip and (p.requires_grad or not trainable_only))


def encoder_class(name: str) -> type[Encoder]:
    return ENCODERS.get(name)


def build_encoder(name: str, featurizer: nn.Module, options: dict[str, Any] | None = None) -> Encoder:
    """Encoder ``name`` with ``options`` checked strictly against its ``Config`` (a typo is a did-you-mean error)."""
    cls = encoder_class(name)
    cfg = from_dict(cls.Config, options, what=f"encoder {name!r} options")
    return cls(cfg, featurizer)


def reference_feature_dim(name: str, options: dict[str, Any] | None = None) -> int:
    cls = encoder_class(name)
    return cls.reference_feature_dim(from_dict(cls.Config, options, what=f"encoder {name!r} options"))


# ---- reference model + training settings -----------------------------------------------------------------
def config_dirs() -> list[Path]:
    """Where ``encoders/<name>.yaml`` live: ``<repo>/configs/encoders`` in an editable install (this file is
    ``<repo>/encoders/base.py``), ``<site-packages>/bench/configs/encoders`` once installed (package data)."""
    here = Path(__file__).resolve().parent
    out = [here.parent / "configs" / "encoders"]
    try:
        import bench

        out.append(Path(bench.__file__).resolve().parent / "configs" / "encoders")
    except ImportError:  # pragma: no cover
        pass
    return [p for p in dict.fromkeys(out) if p.is_dir()]


def load_encoder_config(name: str) -> tuple[dict[str, Any], TrainSettings]:
    """(model options, TrainSettings) from the flat ``configs/encoders/<name>.yaml``. Every key must be either
    a field of the encoder's ``Config`` or of ``TrainSettings``."""
    cls = encoder_class(name)
    for d in config_dirs():
        path = d / f"{name}.yaml"
        if path.is_file():
            break
    else:
        raise FileNotFoundError(f"no configs/encoders/{name}.yaml in {[str(d) for d in config_dirs()]}")
    raw = load_yaml(path)
    model_keys = {f.name for f in dataclasses.fields(cls.Config)}
    train_keys = {f.name for f in dataclasses.fields(TrainSettings)}
    for k in raw:
        if k not in model_keys and k not in train_keys:
            raise ConfigError(f"{path}: " + suggest(k, sorted(model_keys | train_keys), "key"))
    model = {k: v for k, v in raw.items() if k in model_keys}
    from_dict(cls.Config, model, what=str(path))  # validate types now, not at first use
    train = from_dict(TrainSettings, {k: v for k, v in raw.items() if k in train_keys}, what=str(path))
    return model, train

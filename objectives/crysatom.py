"""CrysAtom: distributed representations of atoms from self-supervised pretraining of a CGCNN backbone
(Mukherjee, Ghosh, Basuchowdhuri, LoG 2024 / PMLR 269; reference code shrimonmuke0202/CrysAtom, read at e97e77a).

Per batch:

- adjacency reconstruction on the *clean* graph (not denoising): per-atom L2-normalised node embeddings ->
  6-class edge-multiplicity decoder with class weights [0.1, 1, ...] (objectives/losses.py);
- feature reconstruction: Linear(F -> 92) on the normalised embeddings, BCE-with-logits vs the 92 CGCNN bits
  of each atom (targets come from the ``cgcnn`` table whatever the encoder's featurizer is);
- Barlow Twins between two views. Each view zeroes the featurized input of ``mask_rate`` of each crystal's
  atoms (at least one) through the encoder's ``atom_mask``, and drops ``drop_rate`` of each atom's incoming
  neighbour edges. Graph embedding: mean-pool -> softplus -> Linear(F -> 128) -> softplus -> projector
  Linear(128, 128), Softplus, Linear(128, 128) (CrysAtom/model.py:75-79); both views' outputs L2-normalised
  (``normalize_projections``, as CrysAtom/AtomVectorExtractor.py:192-194 does before the loss); BatchNorm
  without affine per view; C = z1^T z2 / B with the *real* batch size B (the reference divides by a hard-coded
  128, CrysAtom/BarlowTwins.py:27 with AtomVectorExtractor.py:60, wrong for the last batch); lambda 0.0051.

Total 0.25 L_adj + 0.25 L_feat + 0.5 L_BT (AtomVectorExtractor.py:217). Reference backbone: CGCNN with 5 conv
layers of width F = 200 on the 92 CGCNN bits through a bias-free Linear(92 -> F) (model.py:48-50,
AtomVectorExtractor.py:53). Here ``default_featurizer = "cgcnn"`` supplies the 92 bits (frozen) and the bias-free
Linear is the CGCNN encoder's own input layer (``default_encoder_options``: ``layers=5, input_bias=False``); on
another encoder the bits go through that encoder's own input layer.

How the table is made, as the reference does it (bench/pretrain.py implements both; both can be overridden):

- selection ``train-loss``: the epoch with the lowest mean training loss (the mean over the epoch's batches) is
  kept (AtomVectorExtractor.py:94-104); there is no validation split;
- extraction ``last-batch``: per element, the L2-normalised mean of the *raw* final node embeddings of its atoms
  in the last batch of that epoch that contains it, taken from the clean-graph forward pass of the training step
  (training-mode BatchNorm, weights before that step's update): ``embedding_create`` (AtomVectorExtractor.py:
  110-128) runs on every batch (line 196) on the unnormalised conv output (model.py:122 returns it as the 5th
  value) and each batch overwrites the elements it contains (lines 212-213).

Budget: 110 epochs (AtomVectorExtractor.py:21), batch 128, Adam lr 0.03.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import register_objective

from .base import Objective, mean_pool
from .corruption import drop_edges, mask_atoms
from .losses import ADJ_WEIGHTS, AdjacencyDecoder, adjacency_loss, barlow_twins


def _cgcnn_bits() -> torch.Tensor:
    from bench.featurizers import build_featurizer

    feat = build_featurizer("cgcnn")
    return feat.table.detach().clone()  # (119, 92); rows of Z > 100 (no CGCNN bits) are zero


def _cgcnn_defaults() -> dict:
    opts = {"layers": 5}
    try:
        from bench.encoders.base import encoder_class
        import dataclasses

        if "input_bias" in {f.name for f in dataclasses.fields(encoder_class("cgcnn").Config)}:
            opts["input_bias"] = False
    except Exception:  # encoders not importable yet: the layer count is still right
        pass
    return opts


@register_objective("crysatom", version="2")
class CrysAtom(Objective):
    """CrysAtom (Mukherjee et al. 2024): adjacency + CGCNN-bit reconstruction + Barlow Twins between views."""

    @dataclass(frozen=True)
    class Config:
        w_adj: float = 0.25
        w_feat: float = 0.25
        w_bt: float = 0.5
        barlow_lambda: float = 0.0051
        mask_rate: float = 0.1
        drop_rate: float = 0.1
        proj_dim: int = 128
        # L2-normalise both views' projector outputs before Barlow Twins (the reference does)
        normalize_projections: bool = True
        dim: int = 200  # F, the conv width (the released vectors are 200-d)

        def __post_init__(self) -> None:
            from bench.config import ConfigError

            for k in ("mask_rate", "drop_rate"):
                if not 0.0 <= getattr(self, k) < 1.0:
                    raise ConfigError(f"objective 'crysatom' option {k} must be in [0, 1), got {getattr(self, k)}")
            if self.dim < 1 or self.proj_dim < 1:
                raise ConfigError("objective 'crysatom': dim and proj_dim must be positive")

    default_encoder = "cgcnn"
    default_encoder_options = _cgcnn_defaults()
    default_featurizer = "cgcnn"
    default_selection = "train-loss"
    default_extraction = "last-batch"
    reference_epochs = 110

    def __init__(self, config: "CrysAtom.Config", dim: int) -> None:
        super().__init__(config, dim)
        p = config.proj_dim
        self.register_buffer("bits", _cgcnn_bits(), persistent=False)
        self.adj_head = AdjacencyDecoder(dim)
        self.feat_head = nn.Linear(dim, self.bits.shape[1])
        self.graph_fc = nn.Linear(dim, p)
        self.projector = nn.Sequential(nn.Linear(p, p), nn.Softplus(), nn.Linear(p, p))

    def _graph_embedding(self, h: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return self.projector(F.softplus(self.graph_fc(F.softplus(mean_pool(h, n)))))

    def loss(self, encoder, batch) -> dict[str, torch.Tensor]:
        c = self.config
        g = batch.graph
        n = g.batch_num_nodes()
        src, dst = g.edges()
        h = encoder(batch).node
        self.extraction_nodes = h.detach()  # the clean pass the reference extracts its vectors from
        zn = F.normalize(h, dim=-1)
        adj = adjacency_loss(self.adj_head, zn, src, dst, n, ADJ_WEIGHTS)
        feat = F.binary_cross_entropy_with_logits(self.feat_head(zn), self.bits[g.ndata["Z"]])
        views = []
        for _ in range(2):
            mask = mask_atoms(batch, c.mask_rate, self.rng, per_graph=True, at_least_one=True)
            view = drop_edges(batch, c.drop_rate, self.rng, per_node=True)
            z = self._graph_embedding(encoder(view, mask).node, n)
            views.append(F.normalize(z, dim=1) if c.normalize_projections else z)
        bt = barlow_twins(views[0], views[1], c.barlow_lambda)
        total = c.w_adj * adj + c.w_feat * feat + c.w_bt * bt
        return {"total": total, "adjacency": adj, "features": feat, "barlow_twins": bt}

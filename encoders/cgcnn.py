"""CGCNN (Xie & Grossman, "Crystal Graph Convolutional Neural Networks for an Accurate and Interpretable
Prediction of Material Properties", PRL 120, 145301 (2018); reference code txie-93/cgcnn), with message passing
through ``bench.graphops`` (DGL's kernels or plain torch).

Forms used (edge j -> i, src = j, dst = i):

- Edge input u_ij: Gaussian exp(-(d_ij - mu_k)^2 / 0.2^2), mu = 0.0, 0.2, ..., 8.0 Å (41 centres).
- Atom input: featurizer output (reference: the 92 CGCNN bits) -> Linear(in, 64).
- Conv (x3, width 64): z_ij = [v_i | v_j | u_ij]; W z_ij with one Linear(2*64 + 41 -> 2*64); BatchNorm over
  edges; split into filter f and core c; m_ij = sigmoid(f) * softplus(c); s_i = sum_j m_ij; BatchNorm;
  v_i <- softplus(v_i + s_i).
- Readout: mean over atoms -> softplus -> Linear(64, 128) -> softplus -> Linear(128, 1).

Departures from the reference, and why:

- No padding: the reference pads atoms with fewer than 12 neighbours with a fake neighbour (index 0, 9 Å); the
  ``cgcnn`` graph spec keeps the real edges only (the padding injects a spurious bond to atom 0).
- The Linear over z_ij is evaluated as W_i v_i + W_j v_j + W_u u_ij (the same single weight matrix, sliced), so
  the node parts are computed once per atom rather than once per edge; the function and the parameters (shape and
  state-dict layout of ``fc_full``) are those of the reference.
- Given a symmetry-reduced batch (``Batch.q``, ``bench.quotient``) the same function is evaluated on one
  representative per class of atoms and edges: the sum weighted by multiplicities, both batch norms and the mean
  pooling by class sizes; node outputs are expanded back to atoms. An ``atom_mask`` takes the full graph.

Shapes: N atoms, E edges, B graphs. Z (N,) -> featurizer (N, F) -> v (N, 64); u (E, 41); node (N, 64); pred (B,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from bench import graphops as ops
from bench.registry import register_encoder

from .base import Encoder, EncoderOutput
from .layers import batch_norm, cgcnn_basis, mean_over_atoms


class CGCNNConv(nn.Module):
    def __init__(self, width: int, edge_dim: int) -> None:
        super().__init__()
        self.width = width
        self.fc_full = nn.Linear(2 * width + edge_dim, 2 * width)
        self.bn1 = nn.BatchNorm1d(2 * width)
        self.bn2 = nn.BatchNorm1d(width)

    def forward(self, g: ops.Graph, v: torch.Tensor, u: torch.Tensor, quotient: bool = False) -> torch.Tensor:
        """``quotient``: ``g`` is symmetry-reduced (``bench.quotient``): class sizes ``n`` weight the batch norms,
        multiplicities ``w`` the sum."""
        w, W = self.width, self.fc_full.weight
        center = v @ W[:, :w].T  # i = dst
        neigh = v @ W[:, w : 2 * w].T  # j = src
        z = ops.src_add_dst(g, neigh, center) + F.linear(u, W[:, 2 * w :], self.fc_full.bias)
        f, c = batch_norm(self.bn1, z, g.edata["n"] if quotient else None).chunk(2, dim=-1)
        m = torch.sigmoid(f) * F.softplus(c)
        s = ops.sum_in(g, m, g.edata["w"] if quotient else None)
        return F.softplus(v + batch_norm(self.bn2, s, g.ndata["n"] if quotient else None))


@register_encoder("cgcnn", version="1")
class CGCNN(Encoder):
    """CGCNN (Xie & Grossman 2018): gated graph convolutions on the 12-nearest-neighbour graph."""

    graph_spec: ClassVar[str] = "cgcnn"
    supports_quotient: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Config:
        hidden: int = 64  # atom_fea_len
        layers: int = 3  # n_conv
        fc_hidden: int = 128  # h_fea_len
        rbf_max: float = 8.0
        rbf_bins: int = 41
        rbf_width: float = 0.2
        input_bias: bool = True  # False: the bias-free input Linear of CrysAtom's pretraining backbone

    def __init__(self, config: "CGCNN.Config", featurizer: nn.Module) -> None:
        super().__init__(config, featurizer)
        c = config
        self.rbf = cgcnn_basis(c.rbf_max, c.rbf_bins, c.rbf_width)
        self.embedding = nn.Linear(featurizer.dim, c.hidden, bias=c.input_bias)
        self.convs = nn.ModuleList(CGCNNConv(c.hidden, c.rbf_bins) for _ in range(c.layers))
        self.conv_to_fc = nn.Linear(c.hidden, c.fc_hidden)
        self.fc_out = nn.Linear(c.fc_hidden, 1)
        self.embedding_dim = c.hidden

    def forward(self, batch, atom_mask: torch.Tensor | None = None) -> EncoderOutput:
        q = self.reduced_graphs(batch, atom_mask)  # symmetry-reduced graphs when the batch has them
        g = batch.graph if q is None else q.g
        v = self.embedding(self.atom_input(batch, atom_mask, q))
        u = self.rbf(g.edata["d"])
        for conv in self.convs:
            v = conv(g, v, u, quotient=q is not None)
        crys = mean_over_atoms(batch, v, q)
        pred = self.fc_out(F.softplus(self.conv_to_fc(F.softplus(crys)))).squeeze(-1)
        return EncoderOutput(node=v if q is None else v[q.atom_class], pred=pred)

"""CartNet (Solé, Mosella-Montoro & Ruiz-Hidalgo, "Cartesian Encoding Graph Neural Network for Crystal
Structures Property Prediction: Application to Thermal Ellipsoid Estimation", Digital Discovery (2025);
reference code imatge-upc/CartNet, PyG, read at 4d9b4e2), reimplemented with message passing through
``bench.graphops`` (DGL's kernels or plain torch).

Forms used (edge j -> i, src = j, dst = i; r_ij from j's image to i, d_ij = |r_ij|, u_ij = r_ij / d_ij):

- Radial basis (ExpNormal, K = 64): phi_k(d) = f_c(d) exp(-beta (exp(-alpha d) - mu_k)^2), alpha = 5 / r_c,
  mu = linspace(exp(-r_c), 1, K), beta = (2 (1 - exp(-r_c)) / K)^-2, cosine envelope
  f_c(d) = 0.5 (cos(pi d / r_c) + 1) for d < r_c else 0; r_c = 5 Å.
- Atom input (``injection``), x the featurizer output of width F:
  ``encoder`` (default): h0 = SiLU(W_a SiLU(x + b)), b a learned bias of width F, W_a: F -> d: the reference's
  atom encoder (models/cartnet.py:112-126, 155-166; reference F = 2d, a learned 119 x 2d table);
  ``linear``: h0 = W x + c, one Linear(F, d); ``direct``: h0 = x (needs F = d). These are the three ways UNATE
  (Sole et al., arXiv 2605.25866, 2026) injects pretrained vectors; in its downstream code
  (LauraSola/Unsupervised-Atom-Embedding-Gen, CartNet_supervised-main): (1) the element table initialised from
  the vectors and fine-tuned through the atom encoder (main.py:122-134, 266-269; models/cartnet.py:114-134 with
  table width = d): ``embedding-init:<table>`` with ``injection=encoder``, exact when the table width equals
  ``dim``; (2) the frozen vectors through one Linear (``--encoder Linear``, models/cartnet.py:147, 152-153;
  dataset/figshare_dataset.py:82-86 puts the vectors in as data): ``embedding:<table>`` with
  ``injection=linear``; (3) the frozen vectors as the first node state (``--encoder "No encoder"``,
  models/cartnet.py:151): ``embedding:<table>`` with ``injection=direct``. A frozen table through the default
  atom encoder (a bias and two SiLUs around the Linear) is crysbench's form, not one of UNATE's.
- Element table: a ``learned`` (or ``learned-mask``) featurizer is initialised with xavier_uniform over all its
  rows, as the reference initialises its nn.Embedding (models/cartnet.py:113-114), not torch's N(0, 1).
- Edge encoder: e0 = SiLU(W2 SiLU(W1 [phi(d) | u])), 67 -> 2d -> d.
- Layer (x4, d = 256): z_ij = [h_i | h_j | e_ij]; g = sigmoid(BN(MLP_g(z))), MLP = Linear(3d, d), SiLU,
  Linear(d, d); s = f_c(d_ij) g; m = MLP_m(z); a_i = sum_j s * m; h_i <- h_i + SiLU(BN(a_i)); e_ij <- e_ij + s.
- Head: per atom Linear(d, d/2) -> SiLU -> Linear(d/2, 1); mean over atoms.

Symmetry: the edge input holds the Cartesian direction u_ij, so predictions are invariant to atom order and to
translation but NOT to rotation. The reference makes the model approximately invariant with random-rotation
augmentation only for its thermal-ellipsoid (ADP) data set (``--augment`` in scripts/train_cartnet_adp.sh; the
DatasetADP loader, loader/loader.py:29); its JARVIS and Materials Project scripts (scripts/train_cartnet_jarvis.sh,
train_cartnet_megnet.sh) train without it, as crysbench does. tests/test_encoders.py checks both facts.

Departures: the first Linear of MLP_g and of MLP_m over z_ij is evaluated as W_i h_i + W_j h_j + W_e e_ij (each
layer's own weight, sliced; the two first layers share one node GEMM), so node parts are computed once per atom,
not per edge; function and parameter shapes are the reference's. The reference's temperature input (for thermal
ellipsoids) is not part of property prediction and is left out. UNATE's downstream code also drops every
structure that contains an element its table lacks (``--input_filter``, figshare_dataset.py:72-79); crysbench
keeps them and gives such elements a trainable fallback row (reported as coverage).

Shapes: N atoms, E edges, B graphs. Z (N,) -> (N, F) -> h (N, d); (d, r) (E,), (E, 3) -> e (E, d);
node (N, d); pred (B,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from bench import graphops as ops
from bench.config import ConfigError
from bench.registry import register_encoder, suggest

from .base import Encoder, EncoderOutput
from .layers import ExpNormalBasis, cosine_cutoff


class CartNetLayer(nn.Module):
    def __init__(self, dim: int, cutoff: float) -> None:
        super().__init__()
        self.dim = dim
        self.cutoff = cutoff
        self.gate1, self.gate2 = nn.Linear(3 * dim, dim), nn.Linear(dim, dim)
        self.msg1, self.msg2 = nn.Linear(3 * dim, dim), nn.Linear(dim, dim)
        self.bn_gate = nn.BatchNorm1d(dim)
        self.bn_node = nn.BatchNorm1d(dim)

    def forward(self, g, h, e, envelope):
        d = self.dim
        Wg, Wm = self.gate1.weight, self.msg1.weight
        # node GEMM for both MLPs at once: [gate_i | msg_i | gate_j | msg_j]
        W_nodes = torch.cat([Wg[:, :d], Wm[:, :d], Wg[:, d : 2 * d], Wm[:, d : 2 * d]], dim=0)
        gi, mi, gj, mj = (h @ W_nodes.T).split(d, dim=-1)
        node_i = torch.cat([gi, mi], dim=-1)  # i = dst
        node_j = torch.cat([gj, mj], dim=-1)  # j = src
        W_edge = torch.cat([Wg[:, 2 * d :], Wm[:, 2 * d :]], dim=0)
        bias = torch.cat([self.gate1.bias, self.msg1.bias])
        z = ops.src_add_dst(g, node_j, node_i) + F.linear(e, W_edge, bias)
        zg, zm = F.silu(z).split(d, dim=-1)
        s = envelope.unsqueeze(-1) * torch.sigmoid(self.bn_gate(self.gate2(zg)))
        m = self.msg2(zm)
        a = ops.sum_in(g, s * m)
        return h + F.silu(self.bn_node(a)), e + s


INJECTIONS = ("encoder", "linear", "direct")


@register_encoder("cartnet", version="2")
class CartNet(Encoder):
    """CartNet (Solé et al. 2025): gated message passing on Cartesian directions and ExpNormal distances."""

    graph_spec: ClassVar[str] = "cartnet"

    @dataclass(frozen=True)
    class Config:
        dim: int = 256
        layers: int = 4
        rbf_bins: int = 64
        cutoff: float = 5.0
        injection: str = "encoder"  # encoder | linear | direct: how the featurizer's vectors enter (see above)

        def __post_init__(self) -> None:
            if self.injection not in INJECTIONS:
                raise ConfigError("encoder 'cartnet' option injection: "
                                  + suggest(self.injection, list(INJECTIONS), "value"))

    @classmethod
    def reference_feature_dim(cls, config=None) -> int:
        """The reference's table width: 2d into its atom encoder; d for the vectors UNATE injects directly or
        through one Linear (models/cartnet.py:114 in its downstream code)."""
        config = config if config is not None else cls.Config()
        return 2 * config.dim if config.injection == "encoder" else config.dim

    def __init__(self, config: "CartNet.Config", featurizer: nn.Module) -> None:
        super().__init__(config, featurizer)
        c = config
        from bench.featurizers import Learned

        if isinstance(featurizer, Learned):  # the reference's table init (models/cartnet.py:113-114)
            with torch.no_grad():
                nn.init.xavier_uniform_(featurizer.embedding.weight)
        self.rbf = ExpNormalBasis(c.rbf_bins, c.cutoff)
        if c.injection == "direct":
            if featurizer.dim != c.dim:
                raise ConfigError(
                    f"encoder 'cartnet' option injection='direct' uses the featurizer's {featurizer.dim}-d vectors "
                    f"as the first node state, so they must be dim={c.dim} wide: set dim={featurizer.dim} or use "
                    "injection 'linear' or 'encoder'")
        else:
            if c.injection == "encoder":
                self.atom_bias = nn.Parameter(torch.zeros(featurizer.dim))
            self.atom_encoder = nn.Linear(featurizer.dim, c.dim)
        self.edge_encoder1 = nn.Linear(c.rbf_bins + 3, 2 * c.dim)
        self.edge_encoder2 = nn.Linear(2 * c.dim, c.dim)
        self.layers = nn.ModuleList(CartNetLayer(c.dim, c.cutoff) for _ in range(c.layers))
        self.head1 = nn.Linear(c.dim, c.dim // 2)
        self.head2 = nn.Linear(c.dim // 2, 1)
        self.embedding_dim = c.dim

    def forward(self, batch, atom_mask: torch.Tensor | None = None) -> EncoderOutput:
        g = batch.graph
        x = self.atom_input(batch, atom_mask)
        inj = self.config.injection
        if inj == "encoder":
            h = F.silu(self.atom_encoder(F.silu(x + self.atom_bias)))
        elif inj == "linear":
            h = self.atom_encoder(x)
        else:
            h = x
        d = g.edata["d"]
        u = g.edata["r"] / d.clamp_min(1e-8).unsqueeze(-1)
        e = F.silu(self.edge_encoder2(F.silu(self.edge_encoder1(torch.cat([self.rbf(d), u], dim=-1)))))
        envelope = cosine_cutoff(d, self.config.cutoff)
        for layer in self.layers:
            h, e = layer(g, h, e, envelope)
        per_atom = self.head2(F.silu(self.head1(h))).squeeze(-1)
        pred = ops.node_mean(g, per_atom.unsqueeze(-1)).squeeze(-1)
        return EncoderOutput(node=h, pred=pred)

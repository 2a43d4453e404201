"""UNATE: unsupervised atom embeddings from a denoising graph autoencoder plus a contrastive loss
(Sole, Ruiz-Hidalgo, Sola-Garcia, arXiv 2605.25866, 2026; reference code LauraSola/Unsupervised-Atom-Embedding-Gen,
read at 2c1e94a, directory CartNet_unsupervised/), and the paper's ablation axis as registered objectives.

A corrupted view sets the atomic number of ``mask_rate`` of the batch's atoms to the mask token and drops
``drop_rate`` of the edges (both drawn uniformly over the whole batch, as the reference does:
train/train_contrastive.py:224-255).

- denoising autoencoder: encode a corrupted view; from its per-atom L2-normalised embeddings predict the *clean*
  targets: node head Linear(d -> 119) with cross-entropy vs the clean Z; adjacency head (objectives/losses.py)
  vs the clean graph's edge multiplicities (6 classes, weights [0.1, 1, ...]) (models/cartnet.py:343-401);
- NT-Xent between two further corrupted views, encoded together in one pass (so BatchNorm statistics cover both,
  as in the reference, train_contrastive.py:310-319): mean-pool -> Linear(d, d) -> SiLU -> Linear(d, d)
  (models/cartnet.py:404-433), L2-normalised, temperature 0.07 (train_contrastive.py:60-92).

``ssl`` selects the self-supervised branch: ``ntxent`` (above), ``barlow`` (the reference's Barlow Twins
alternative, train/train.py:274-285: the two views encoded in separate passes, both projector outputs
L2-normalised, BatchNorm without affine, C / real batch size, lambda 0.0051), ``dgi`` (Deep Graph Infomax,
Velickovic, Fedus, Hamilton, Lio, Bengio & Hjelm, ICLR 2019; the seed repository lists it in its README but has
no code for it, so it is implemented here from the DGI paper: positives are the clean graph's node embeddings,
negatives those of the same graphs with the atoms' identities shuffled across the batch, the summary of each
crystal is sigmoid(mean of its node embeddings), the discriminator a bilinear score h_i^T W s, binary
cross-entropy over both) or ``none`` (no self-supervised branch; ``w_ssl`` must be 0).

``ae_view="separate"`` (default) is the reference's three corrupted views per batch (one for the autoencoder,
two for the contrastive loss); ``ae_view="shared"`` computes the autoencoder losses on the two contrastive
views instead (averaged): two thirds of the encoder work, the same expected loss.

Total = w_node * L_node + w_adj * L_adj + w_ssl * L_ssl (reference defaults 0.25 / 0.25 / 0.5, main.py:157-159;
the run the reference extracts its 128-d vectors from used 225 / 4 / 3, scripts/train_cartnet_MP_1run.sh:21-23).
A branch whose weights are all zero is not computed.

How the table is made, as the reference does it (bench/pretrain.py implements both; both can be overridden):

- selection ``validation``: the reference holds out a seeded 10 % of its corpus (loader/loader.py:148-160,
  192-201), corrupts each validation batch once before training (train_contrastive.py:42-57, 121), evaluates the
  total loss in eval mode after every epoch (lines 134-135, 370-421) and keeps the checkpoint with the lowest
  validation loss (lines 142, 158-172);
- extraction ``mean``: that checkpoint, in eval mode, on the clean graphs of the training split (the reference's
  loaders[0], extreure_embeddings.py:121-133); per element the mean of the *raw* final-layer node embeddings
  (the model returns the batch after its layers, models/cartnet.py:72-87; the L2 normalisation of the decoder,
  line 371, is local to it), then L2 (extreure_embeddings.py:135-154). Elements never seen get no row here (the
  reference writes zeros).

Budget: about 120 epochs: the reference's 128-d run is 60 epochs resumed from the best checkpoint of a first part
(scripts/train_cartnet_MP_1run.sh:21-23, train_contrastive.py:127); here one run of 120 epochs selecting over all
of them. Batch 128, Adam lr 0.03, no scheduler (main.py:251, train_contrastive.py:118-119).

The ablation axis of the paper, one registry entry each (same code, other defaults):

- ``unate-ae``: the autoencoder branch only (the reference's ``--loss "branca dalt"``, train_contrastive.py:
  309, 324-325);
- ``unate-contrastive``: the contrastive (NT-Xent) branch only (w_node = w_adj = 0);
- ``unate-barlow``: Barlow Twins in place of NT-Xent (train/train.py:274-289);
- ``unate-dgi``: Deep Graph Infomax in place of NT-Xent (from the DGI paper; no seed code).

Mask token: the default featurizer ``learned-mask`` is the ``learned`` table whose row 0 is a trainable mask
token (registered here); masked atoms get Z = 0 in the corrupted view. With any other featurizer (no row 0) a
masked atom's featurized input is zeroed through the encoder's ``atom_mask`` instead (a fixed zero token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.featurizers import DEFAULT_LEARNED_DIM, FeaturizerError, Learned
from bench.registry import FEATURIZERS, register_objective
from bench.structures import MAX_Z

from .base import Objective, mean_pool
from .corruption import concat_batches, drop_edges, mask_atoms, with_atomic_numbers, with_permuted_atoms
from .losses import ADJ_WEIGHTS, AdjacencyDecoder, adjacency_loss, barlow_twins, nt_xent

SSL_KINDS = ("ntxent", "barlow", "dgi", "none")


class LearnedWithMask(Learned):
    """The ``learned`` table (119 rows) that also accepts Z = 0: row 0 is the trainable mask token."""

    mask_token = 0

    def _check(self, Z: torch.Tensor) -> None:
        if Z.numel() and (int(Z.min()) < 0 or int(Z.max()) > MAX_Z):
            raise FeaturizerError(f"featurizer {self.name!r}: atomic numbers must lie in 0..{MAX_Z} (0 = mask)")


def _learned_mask(arg, dim, spec):
    """A trainable element table whose row 0 is a mask token (UNATE's atom input)."""
    if arg is not None:
        raise FeaturizerError(f"featurizer 'learned-mask' takes no ':' argument (got {spec})")
    return LearnedWithMask(dim or DEFAULT_LEARNED_DIM, spec)


FEATURIZERS.add("learned-mask", _learned_mask, description=_learned_mask.__doc__)


def _check_unate_config(name: str, c) -> None:
    from bench.config import ConfigError
    from bench.registry import suggest

    if c.ae_view not in ("separate", "shared"):
        raise ConfigError(f"objective {name!r} option ae_view: " + suggest(c.ae_view, ["separate", "shared"], "value"))
    if c.ssl not in SSL_KINDS:
        raise ConfigError(f"objective {name!r} option ssl: " + suggest(c.ssl, list(SSL_KINDS), "value"))
    for k in ("mask_rate", "drop_rate"):
        if not 0.0 <= getattr(c, k) < 1.0:
            raise ConfigError(f"objective {name!r} option {k} must be in [0, 1), got {getattr(c, k)}")
    for k in ("w_node", "w_adj", "w_ssl"):
        if getattr(c, k) < 0:
            raise ConfigError(f"objective {name!r} option {k} must be >= 0, got {getattr(c, k)}")
    if c.ssl == "none" and c.w_ssl != 0:
        raise ConfigError(f"objective {name!r}: ssl='none' has no self-supervised loss, so w_ssl={c.w_ssl} "
                          "would do nothing; set w_ssl=0 or choose ssl ntxent, barlow or dgi")
    if c.w_node == c.w_adj == c.w_ssl == 0:
        raise ConfigError(f"objective {name!r}: w_node, w_adj and w_ssl are all 0: nothing to train")
    if c.temperature <= 0 or c.dim < 1:
        raise ConfigError(f"objective {name!r}: temperature and dim must be positive")


@register_objective("unate", version="2")
class Unate(Objective):
    """UNATE (Sole et al. 2026): denoising graph autoencoder (node + adjacency) + NT-Xent between views."""

    @dataclass(frozen=True)
    class Config:
        w_node: float = 0.25
        w_adj: float = 0.25
        w_ssl: float = 0.5
        temperature: float = 0.07
        mask_rate: float = 0.1
        drop_rate: float = 0.1
        ssl: str = "ntxent"  # ntxent | barlow | dgi | none
        barlow_lambda: float = 0.0051
        # L2-normalise the projector outputs before Barlow Twins (the reference does; NT-Xent always does)
        normalize_projections: bool = True
        ae_view: str = "separate"  # separate (reference: its own corrupted view) | shared (reuse the SSL views)
        dim: int = 128  # node-embedding width (the paper uses 64 and 128)

        def __post_init__(self) -> None:
            _check_unate_config("unate", self)

    default_encoder = "cartnet"
    default_featurizer = "learned-mask"
    default_selection = "validation"
    default_extraction = "mean"
    reference_epochs = 120

    def __init__(self, config: "Unate.Config", dim: int) -> None:
        super().__init__(config, dim)
        self.node_head = nn.Linear(dim, MAX_Z + 1)
        self.adj_head = AdjacencyDecoder(dim)
        if config.ssl in ("ntxent", "barlow"):
            self.projector = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        elif config.ssl == "dgi":
            self.discriminator = nn.Bilinear(dim, dim, 1)

    def _view(self, encoder, batch):
        """A corrupted view and the atom_mask to pass the encoder (None when the mask token is a table row)."""
        c = self.config
        mask = mask_atoms(batch, c.mask_rate, self.rng, per_graph=False, at_least_one=c.mask_rate > 0)
        token = getattr(getattr(encoder, "featurizer", None), "mask_token", None)
        if token is not None:
            view, atom_mask = with_atomic_numbers(batch, mask, token), None
        else:
            view, atom_mask = batch, mask
        return drop_edges(view, c.drop_rate, self.rng), atom_mask

    def _ae_losses(self, h, z_clean, src, dst, n):
        zn = F.normalize(h, dim=-1)
        return F.cross_entropy(self.node_head(zn), z_clean), adjacency_loss(self.adj_head, zn, src, dst, n, ADJ_WEIGHTS)

    def _dgi(self, encoder, batch, n) -> torch.Tensor:
        """Deep Graph Infomax (Velickovic et al. 2019, eqs. 1-2 with the bilinear discriminator of section 4)."""
        h = encoder(batch).node
        h_neg = encoder(with_permuted_atoms(batch, self.rng)).node
        seg = torch.repeat_interleave(torch.arange(len(n), device=h.device), n.to(h.device))
        s = torch.sigmoid(mean_pool(h, n))[seg]  # each atom's crystal summary
        logits = torch.cat([self.discriminator(h, s), self.discriminator(h_neg, s)]).squeeze(-1)
        labels = torch.cat([torch.ones(len(h)), torch.zeros(len(h_neg))]).to(logits)
        return F.binary_cross_entropy_with_logits(logits, labels)

    def loss(self, encoder, batch) -> dict[str, torch.Tensor]:
        c = self.config
        g = batch.graph
        z_clean = g.ndata["Z"]
        src, dst = g.edges()
        n = g.batch_num_nodes()
        n_atoms = g.num_nodes()
        zero = torch.zeros((), device=z_clean.device)
        need_ae = c.w_node > 0 or c.w_adj > 0
        node_loss = adj_loss = ssl = zero
        if need_ae and (c.ae_view == "separate" or c.ssl not in ("ntxent", "barlow")):
            view, m = self._view(encoder, batch)
            node_loss, adj_loss = self._ae_losses(encoder(view, m).node, z_clean, src, dst, n)
        if c.ssl in ("ntxent", "barlow") and (c.w_ssl > 0 or (need_ae and c.ae_view == "shared")):
            (v1, m1), (v2, m2) = self._view(encoder, batch), self._view(encoder, batch)
            if c.ssl == "ntxent":  # both views in one pass (train_contrastive.py:313-317)
                masks = None if m1 is None else torch.cat([m1, m2])
                h = encoder(concat_batches(v1, v2), masks).node
                h1, h2 = h[:n_atoms], h[n_atoms:]
            else:  # one pass per view (train/train.py:278-279)
                h1, h2 = encoder(v1, m1).node, encoder(v2, m2).node
            if need_ae and c.ae_view == "shared":
                parts = [self._ae_losses(hv, z_clean, src, dst, n) for hv in (h1, h2)]
                node_loss = (parts[0][0] + parts[1][0]) / 2
                adj_loss = (parts[0][1] + parts[1][1]) / 2
            p1, p2 = self.projector(mean_pool(h1, n)), self.projector(mean_pool(h2, n))
            if c.ssl == "ntxent":
                ssl = nt_xent(p1, p2, c.temperature)
            else:
                if c.normalize_projections:  # train/train.py:281-282
                    p1, p2 = F.normalize(p1, dim=1), F.normalize(p2, dim=1)
                ssl = barlow_twins(p1, p2, c.barlow_lambda)
        elif c.ssl == "dgi" and c.w_ssl > 0:
            ssl = self._dgi(encoder, batch, n)
        total = c.w_node * node_loss + c.w_adj * adj_loss + c.w_ssl * ssl
        return {"total": total, "node": node_loss, "adjacency": adj_loss, "ssl": ssl}


def _ablation(name: str, doc: str, **defaults):
    """Register UNATE under ``name`` with other option defaults (the paper's ablation axis)."""
    import dataclasses

    base = Unate.Config
    fields = [(f.name, f.type, dataclasses.field(default=defaults.get(f.name, f.default)))
              for f in dataclasses.fields(base)]
    config = dataclasses.make_dataclass("Config", fields, frozen=True,
                                        namespace={"__post_init__": lambda self: _check_unate_config(name, self)})
    config.__qualname__ = f"{name}.Config"
    cls = type(name.title().replace("-", ""), (Unate,), {"Config": config, "__doc__": doc,
                                                           "__module__": __name__})
    return register_objective(name, version="1")(cls)


UnateAE = _ablation("unate-ae", "UNATE ablation (Sole et al. 2026, the paper's ablation axis): the denoising autoencoder branch only (node + adjacency).",
                    w_ssl=0.0, ssl="none")
UnateContrastive = _ablation("unate-contrastive", "UNATE ablation (Sole et al. 2026): the contrastive (NT-Xent) branch only.",
                             w_node=0.0, w_adj=0.0)
UnateBarlow = _ablation("unate-barlow", "UNATE ablation (Sole et al. 2026): Barlow Twins in place of NT-Xent (as the seed code has it).",
                        ssl="barlow")
UnateDGI = _ablation("unate-dgi", "UNATE ablation (Sole et al. 2026): Deep Graph Infomax (Velickovic et al. 2019) in place of NT-Xent.",
                     ssl="dgi")

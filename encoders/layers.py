"""Shared numerics for the encoders: radial/angular basis expansions, cutoff envelopes, MLP blocks, a segment
Set2Set, and segment helpers over batched graphs (``bench.graphops``).

Basis forms (x: a distance in Å or a bond-angle cosine; mu_k: centres):

- ``GaussianBasis``: phi_k(x) = exp(-gamma (x - mu_k)^2), centres linspace(vmin, vmax, bins). The three
  Gaussian encoders differ only in gamma:
  CGCNN (Xie & Grossman 2018): gamma = 1 / 0.2^2 (``exp(-(d-mu)^2 / var^2)``, var = 0.2 = the step);
  ALIGNN (Choudhary & DeCost 2021): gamma = 1 / spacing (not squared), spacing = (vmax - vmin) / (bins - 1);
  MEGNet as matgl (<= 2.0, ``GaussianExpansion``) writes it: gamma = width = 0.5, i.e. exp(-0.5 (d-mu)^2).
- ``ExpNormalBasis`` (CartNet, Sole et al. 2025, after PhysNet/TorchMD-Net):
  phi_k(d) = f_c(d) exp(-beta (exp(-alpha d) - mu_k)^2), alpha = 5 / r_c, mu_k = linspace(exp(-r_c), 1, K),
  beta = (2 (1 - exp(-r_c)) / K)^-2, and the cosine envelope f_c(d) = 0.5 (cos(pi d / r_c) + 1) for d < r_c,
  0 beyond (1 at d = 0, 0 with zero slope at r_c).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from bench import graphops as ops

LN2 = math.log(2.0)


class GaussianBasis(nn.Module):
    """exp(-gamma (x - mu_k)^2) with mu = linspace(vmin, vmax, bins). Shapes: (M,) -> (M, bins)."""

    def __init__(self, vmin: float, vmax: float, bins: int, gamma: float) -> None:
        super().__init__()
        if bins < 2 or vmax <= vmin:
            raise ValueError(f"GaussianBasis: need bins >= 2 and vmax > vmin, got {bins}, {vmin}..{vmax}")
        self.register_buffer("centers", torch.linspace(vmin, vmax, bins), persistent=False)
        self.gamma = float(gamma)
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (x.unsqueeze(-1) - self.centers) ** 2)

    def extra_repr(self) -> str:
        c = self.centers
        return f"{float(c[0]):g}..{float(c[-1]):g}, bins={self.bins}, gamma={self.gamma:.6g}"


def cgcnn_basis(dmax: float = 8.0, bins: int = 41, var: float = 0.2) -> GaussianBasis:
    return GaussianBasis(0.0, dmax, bins, 1.0 / var**2)


def alignn_basis(vmin: float, vmax: float, bins: int) -> GaussianBasis:
    spacing = (vmax - vmin) / (bins - 1)
    return GaussianBasis(vmin, vmax, bins, 1.0 / spacing)


def megnet_basis(dmax: float = 5.0, bins: int = 100, width: float = 0.5) -> GaussianBasis:
    return GaussianBasis(0.0, dmax, bins, width)


def cosine_cutoff(d: torch.Tensor, cutoff: float) -> torch.Tensor:
    """0.5 (cos(pi d / r_c) + 1) for d < r_c, else 0."""
    return torch.where(d < cutoff, 0.5 * (torch.cos(d * (math.pi / cutoff)) + 1.0), torch.zeros_like(d))


class ExpNormalBasis(nn.Module):
    """CartNet's radial basis (see module docstring). Shapes: (E,) -> (E, bins)."""

    def __init__(self, bins: int = 64, cutoff: float = 5.0) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.alpha = 5.0 / cutoff
        start = math.exp(-cutoff)
        self.register_buffer("means", torch.linspace(start, 1.0, bins), persistent=False)
        self.beta = (2.0 * (1.0 - start) / bins) ** -2

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        env = cosine_cutoff(d, self.cutoff).unsqueeze(-1)
        return env * torch.exp(-self.beta * (torch.exp(-self.alpha * d).unsqueeze(-1) - self.means) ** 2)


def softplus2(x: torch.Tensor) -> torch.Tensor:
    """SoftPlus2 (MEGNet): softplus(x) - ln 2, zero at zero."""
    return F.softplus(x) - LN2


class LinearBNSiLU(nn.Module):
    """ALIGNN's ``MLPLayer``: Linear -> BatchNorm1d -> SiLU."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.bn = nn.BatchNorm1d(n_out)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return F.silu(batch_norm(self.bn, self.linear(x), weight))


def batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``bn(x)``, or, with ``weight`` (M,) in training mode, batch norm over a multiset in which row i occurs
    ``weight[i]`` times (a symmetry-reduced batch, ``bench.quotient``): the same normalisation, affine map and
    running-statistics update (momentum, unbiased running variance) as ``bn`` applied to the expanded rows."""
    if weight is None or not bn.training:
        return bn(x)
    if bn.momentum is None or not bn.track_running_stats or not bn.affine:
        raise ValueError("weighted batch_norm supports affine BatchNorm1d with running statistics and a momentum")
    if _autocast_on(x.device) or x.dtype != bn.running_mean.dtype:  # bf16: statistics in float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            return _weighted_batch_norm(bn, ops.upcast(x).to(bn.running_mean.dtype), weight)
    return _weighted_batch_norm(bn, x, weight)


def _autocast_on(device: torch.device) -> bool:
    try:  # torch >= 2.4
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # torch 2.2: the no-argument form asks about CUDA only
        return torch.is_autocast_cpu_enabled() if device.type == "cpu" else torch.is_autocast_enabled()


def _weighted_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    weight = weight.to(x.dtype)
    total = weight.sum()
    p = weight / total
    mean = p @ x
    xc = x - mean
    var = p @ xc.square()
    with torch.no_grad():  # no host sync on a GPU: a single row (total 1) is not checked, as bn(x) would
        bn.num_batches_tracked.add_(1)
        bn.running_mean.lerp_(mean, bn.momentum)
        bn.running_var.lerp_(var * (total / (total - 1).clamp_min(1.0)), bn.momentum)
    return torch.addcmul(bn.bias, xc, torch.rsqrt(var + bn.eps) * bn.weight)


class SoftPlus2MLP(nn.Module):
    """Dense layers with SoftPlus2 after each (``activate_last``: also after the last), as MEGNet uses."""

    def __init__(self, dims: list[int] | tuple[int, ...], activate_last: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.activate_last = activate_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.layers)
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < n - 1 or self.activate_last:
                x = softplus2(x)
        return x


def mean_over_atoms(batch, h: torch.Tensor, reduced=None) -> torch.Tensor:
    """Per-crystal mean of atom features (B, d). On symmetry-reduced graphs (``reduced``, one row per atom class)
    the class-size-weighted sum over classes divided by the crystal's atom count: the same mean."""
    if reduced is None:
        return ops.node_mean(batch.graph, h)
    atoms = batch.graph.batch_num_nodes().to(h.dtype).unsqueeze(-1)
    g = reduced.g
    return ops.node_sum(g, h * g.ndata["n"].unsqueeze(-1)) / atoms


def segment_ids(counts: torch.Tensor) -> torch.Tensor:
    """[2, 3] -> [0, 0, 1, 1, 1]: the graph index of each node or edge of a batched graph."""
    return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)


def segment_mean(x: torch.Tensor, seg: torch.Tensor, n: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of rows of ``x`` per segment; an empty segment gives zeros. ``weight`` (M,): row i counts
    ``weight[i]`` times (a symmetry-reduced batch, ``bench.quotient``)."""
    shape = (n,) + (1,) * (x.dim() - 1)
    x = ops.upcast(x)  # bf16: accumulate in float32
    if weight is None:
        out = x.new_zeros((n,) + x.shape[1:]).index_add_(0, seg, x)
        return out / torch.bincount(seg, minlength=n).clamp_min(1).to(x.dtype).view(shape)
    out = x.new_zeros((n,) + x.shape[1:]).index_add_(0, seg, x * weight.view((-1,) + (1,) * (x.dim() - 1)))
    return out / x.new_zeros(n).index_add_(0, seg, weight.to(x.dtype)).clamp_min(1.0).view(shape)


def segment_softmax(score: torch.Tensor, seg: torch.Tensor, n: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax of a score vector (M,) within each segment. With ``weight``, row i stands for ``weight[i]`` equal
    rows, and the result is their total share (so ``sum_seg a x`` is the full graph's attention sum)."""
    score = ops.upcast(score)
    mx = score.new_full((n,), -torch.inf).scatter_reduce(0, seg, score, reduce="amax", include_self=True)
    ex = torch.exp(score - mx[seg])
    if weight is not None:
        ex = ex * weight
    den = ex.new_zeros(n).index_add_(0, seg, ex)
    return ex / den[seg]


class Set2Set(nn.Module):
    """Set2Set (Vinyals et al. 2016) over segments, as DGL's ``Set2Set`` and matgl's MEGNet readout use it:
    q* <- 0; repeat T times: q = LSTM(q*); a = softmax_seg(<x, q>); r = sum_seg a x; q* = [q | r].
    Shapes: x (M, d), seg (M,) -> (n, 2d). Works for nodes and for edges alike; an empty segment gives r = 0.
    """

    def __init__(self, dim: int, iterations: int = 2, lstm_layers: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.iterations = iterations
        self.lstm = nn.LSTM(2 * dim, dim, lstm_layers)

    def forward(self, x: torch.Tensor, seg: torch.Tensor, n: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``weight`` (M,): row i stands for ``weight[i]`` equal rows (a symmetry-reduced batch)."""
        x = ops.upcast(x)  # bf16: the attention sums in float32
        L = self.lstm.num_layers
        h = (x.new_zeros(L, n, self.dim), x.new_zeros(L, n, self.dim))
        q_star = x.new_zeros(n, 2 * self.dim)
        for _ in range(self.iterations):
            q, h = self.lstm(q_star.unsqueeze(0), h)
            q = q.squeeze(0)
            a = segment_softmax((x * q[seg]).sum(-1), seg, n, weight)
            r = x.new_zeros(n, self.dim).index_add_(0, seg, a.unsqueeze(-1) * x)
            q_star = torch.cat([q, r], dim=-1)
        return q_star


def node_graph_ids(g: ops.Graph) -> torch.Tensor:
    return g.node_graph_ids()


def edge_graph_ids(g: ops.Graph) -> torch.Tensor:
    return g.edge_graph_ids()

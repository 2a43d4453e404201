"""The encoders' numerics against hand computations: basis expansions, the cutoff envelope, ALIGNN's
normalised edge gate, the CGCNN, MEGNet and CartNet convolutions (per edge, with the unsliced weights, on a
directed graph so that a swap of centre i = dst and neighbour j = src is caught), and the Set2Set readout of
MEGNet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bench.encoders.alignn import EdgeGatedGraphConv
from bench.graphops import Graph
from bench.encoders.cartnet import CartNetLayer
from bench.encoders.cgcnn import CGCNNConv
from bench.encoders.megnet import MEGNetConv
from bench.encoders.layers import (
    ExpNormalBasis,
    Set2Set,
    alignn_basis,
    cgcnn_basis,
    cosine_cutoff,
    megnet_basis,
    segment_softmax,
    softplus2,
)

D = torch.tensor([0.0, 0.37, 1.0, 2.5, 4.99, 7.3], dtype=torch.float64)


def test_cgcnn_gaussian():
    rbf = cgcnn_basis()
    mu = np.arange(0.0, 8.0 + 1e-9, 0.2)
    assert len(mu) == 41 and rbf.centers.shape == (41,)
    expect = np.exp(-((D.numpy()[:, None] - mu) ** 2) / 0.2**2)
    assert np.allclose(rbf(D.float()).numpy(), expect, atol=1e-6)


def test_alignn_gamma_is_one_over_spacing():
    rbf = alignn_basis(0.0, 8.0, 80)
    spacing = 8.0 / 79
    assert rbf.gamma == pytest.approx(1 / spacing)
    mu = np.linspace(0, 8, 80)
    expect = np.exp(-(1 / spacing) * (D.numpy()[:, None] - mu) ** 2)
    assert np.allclose(rbf(D.float()).numpy(), expect, atol=1e-6)
    # one spacing away from a centre: exp(-spacing), not exp(-1) (gamma is not squared)
    x = torch.tensor([float(mu[10] + spacing)])
    assert float(rbf(x)[0, 10]) == pytest.approx(math.exp(-spacing), rel=1e-5)
    ang = alignn_basis(-1.0, 1.0, 40)
    assert ang.gamma == pytest.approx(39 / 2)


def test_megnet_gaussian_matgl_form():
    rbf = megnet_basis()
    mu = np.linspace(0, 5, 100)
    expect = np.exp(-0.5 * (D.numpy()[:, None] - mu) ** 2)
    assert np.allclose(rbf(D.float()).numpy(), expect, atol=1e-6)
    assert float(softplus2(torch.tensor(0.0))) == pytest.approx(0.0, abs=1e-7)


def test_cosine_cutoff_and_expnormal():
    rc = 5.0
    d = torch.linspace(0, 7, 701, dtype=torch.float64)
    fc = cosine_cutoff(d, rc)
    assert float(fc[0]) == 1.0
    assert torch.all(fc[d >= rc] == 0)
    assert torch.all(fc[1:] <= fc[:-1])  # monotone
    # smooth at r_c: value and slope vanish from the left
    eps = 1e-4
    left = cosine_cutoff(torch.tensor([rc - eps], dtype=torch.float64), rc)
    assert float(left) < 1e-7 and float(left) / eps < 1e-3
    basis = ExpNormalBasis(64, rc)
    x = d[d < 6].float()
    out = basis(x).double().numpy()
    alpha, start = 5 / rc, math.exp(-rc)
    mu = np.linspace(start, 1, 64)
    beta = (2 * (1 - start) / 64) ** -2
    xs = x.double().numpy()
    env = np.where(xs < rc, 0.5 * (np.cos(np.pi * xs / rc) + 1), 0.0)
    expect = env[:, None] * np.exp(-beta * (np.exp(-alpha * xs)[:, None] - mu) ** 2)
    assert np.allclose(out, expect, atol=1e-5)
    assert np.all(out[xs >= rc] == 0)
    assert out[0, -1] == pytest.approx(1.0)  # d = 0: exp(-alpha d) = 1 = the last centre, envelope 1


def _bn_eval(bn, x):
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def test_alignn_normalised_gate_by_hand():
    torch.manual_seed(0)
    w = 4
    conv = EdgeGatedGraphConv(w).eval()
    for bn in (conv.bn_nodes, conv.bn_edges):  # non-trivial BN so that its use is checked too
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    src, dst = [0, 2, 1, 0], [1, 1, 2, 2]  # node 0 has no incoming edge: its aggregate is 0 / (0 + 1e-6) = 0
    g = Graph.single(torch.tensor(src), torch.tensor(dst), 3)
    h = torch.randn(3, w)
    e = torch.randn(4, w)
    with torch.no_grad():
        h_new, e_new = conv(g, h, e)
    W, b = conv.node_linear.weight, conv.node_linear.bias
    lin = [lambda x, k=k: x @ W[k * w : (k + 1) * w].T + b[k * w : (k + 1) * w] for k in range(4)]
    A, B_, Dm, E = lin
    C = lambda x: x @ conv.edge_gate.weight.T + conv.edge_gate.bias  # noqa: E731
    with torch.no_grad():
        m = torch.stack([A(h[u]) + B_(h[v]) + C(e[k]) for k, (u, v) in enumerate(zip(src, dst))])
        s = torch.sigmoid(m)
        expect_h = []
        for v in range(3):
            num = sum((s[k] * E(h[u]) for k, (u, vv) in enumerate(zip(src, dst)) if vv == v), torch.zeros(w))
            den = sum((s[k] for k, (u, vv) in enumerate(zip(src, dst)) if vv == v), torch.zeros(w))
            agg = num / (den + 1e-6)
            expect_h.append(h[v] + F.silu(_bn_eval(conv.bn_nodes, Dm(h[v]) + agg)))
        expect_e = e + F.silu(_bn_eval(conv.bn_edges, m))
    assert torch.allclose(h_new, torch.stack(expect_h), atol=1e-5)
    assert torch.allclose(e_new, expect_e, atol=1e-5)


# A directed graph (edge k: SRC[k] = j -> DST[k] = i): node 0 has no incoming edge, node 2 has three.
SRC, DST = [0, 2, 1, 0, 2], [1, 1, 2, 2, 2]


def _directed_graph():
    return Graph.single(torch.tensor(SRC), torch.tensor(DST), 3)


def _random_bn(module):
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm1d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
    return module.eval()


def _sum_at_dst(msg: torch.Tensor, n: int = 3) -> torch.Tensor:
    return torch.stack([sum((msg[k] for k, i in enumerate(DST) if i == v), torch.zeros(msg.shape[1]))
                        for v in range(n)])


def test_cgcnn_conv_by_hand():
    # z_ij = [v_i | v_j | u_ij] through the one fc_full (the layer evaluates it sliced), i the centre.
    torch.manual_seed(0)
    w, ed = 4, 5
    conv = _random_bn(CGCNNConv(w, ed))
    v, u = torch.randn(3, w), torch.randn(len(SRC), ed)
    with torch.no_grad():
        got = conv(_directed_graph(), v, u)
        z = torch.stack([torch.cat([v[i], v[j], u[k]]) for k, (j, i) in enumerate(zip(SRC, DST))])
        f, c = _bn_eval(conv.bn1, conv.fc_full(z)).chunk(2, dim=-1)
        s = _sum_at_dst(torch.sigmoid(f) * F.softplus(c))
        expect = F.softplus(v + _bn_eval(conv.bn2, s))
    assert torch.allclose(got, expect, atol=1e-5)


def test_megnet_conv_by_hand():
    # phi_e([v_src | v_dst | e | u]); phi_v([v | mean of the updated incoming e | u]); phi_u([u | mean e' | mean v'])
    torch.manual_seed(0)
    w = 4
    conv = MEGNetConv(w, (6, 6)).eval()
    v, e, u = torch.randn(3, w), torch.randn(len(SRC), w), torch.randn(1, w)
    node_seg, edge_seg = torch.zeros(3, dtype=torch.long), torch.zeros(len(SRC), dtype=torch.long)
    with torch.no_grad():
        e_new, v_new, u_new = conv(_directed_graph(), e, v, u, node_seg, edge_seg)
        e_exp = conv.edge_mlp(torch.stack([torch.cat([v[j], v[i], e[k], u[0]])
                                           for k, (j, i) in enumerate(zip(SRC, DST))]))
        e_mean = torch.stack([torch.stack([e_exp[k] for k, i in enumerate(DST) if i == n]).mean(0)
                              if n in DST else torch.zeros(w) for n in range(3)])  # node 0: no incoming edge
        v_exp = conv.node_mlp(torch.cat([v, e_mean, u.expand(3, w)], dim=-1))
        u_exp = conv.state_mlp(torch.cat([u[0], e_exp.mean(0), v_exp.mean(0)]).unsqueeze(0))
    assert torch.allclose(e_new, e_exp, atol=1e-5)
    assert torch.allclose(v_new, v_exp, atol=1e-5)
    assert torch.allclose(u_new, u_exp, atol=1e-5)


def test_cartnet_layer_by_hand():
    # z_ij = [h_i | h_j | e_ij]; s = f_c(d) sigmoid(BN(MLP_g(z))); h_i += SiLU(BN(sum_j s * MLP_m(z))); e += s
    torch.manual_seed(0)
    d = 4
    layer = _random_bn(CartNetLayer(d, 5.0))
    h, e = torch.randn(3, d), torch.randn(len(SRC), d)
    env = cosine_cutoff(torch.tensor([1.0, 2.0, 4.9, 3.0, 0.5]), 5.0)
    with torch.no_grad():
        h_new, e_new = layer(_directed_graph(), h, e, env)
        z = torch.stack([torch.cat([h[i], h[j], e[k]]) for k, (j, i) in enumerate(zip(SRC, DST))])
        s = env.unsqueeze(-1) * torch.sigmoid(_bn_eval(layer.bn_gate, layer.gate2(F.silu(layer.gate1(z)))))
        m = layer.msg2(F.silu(layer.msg1(z)))
        h_exp = h + F.silu(_bn_eval(layer.bn_node, _sum_at_dst(s * m)))
    assert torch.allclose(h_new, h_exp, atol=1e-5)
    assert torch.allclose(e_new, e + s, atol=1e-5)


def _set2set_by_hand(s2s: Set2Set, xs: list[torch.Tensor]) -> torch.Tensor:
    """One graph at a time, with explicit LSTM gate equations (PyTorch's i, f, g, o order)."""
    lstm = s2s.lstm
    Wi, Wh, bi, bh = lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0
    d = s2s.dim
    out = []
    for x in xs:
        h = torch.zeros(d)
        c = torch.zeros(d)
        q_star = torch.zeros(2 * d)
        for _ in range(s2s.iterations):
            gates = Wi @ q_star + bi + Wh @ h + bh
            i, f, gg, o = gates.split(d)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
            h = torch.sigmoid(o) * torch.tanh(c)
            q = h
            if len(x):
                a = torch.softmax(x @ q, dim=0)
                r = (a[:, None] * x).sum(0)
            else:
                r = torch.zeros(d)
            q_star = torch.cat([q, r])
        out.append(q_star)
    return torch.stack(out)


def test_set2set_readout_by_hand_and_against_dgl():
    torch.manual_seed(0)
    d = 5
    s2s = Set2Set(d, iterations=2)
    xs = [torch.randn(3, d), torch.randn(4, d)]
    x = torch.cat(xs)
    seg = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    with torch.no_grad():
        got = s2s(x, seg, 2)
        assert torch.allclose(got, _set2set_by_hand(s2s, xs), atol=1e-6)
        # DGL's node Set2Set (the readout matgl's MEGNet uses) with the same LSTM weights
        dgl = pytest.importorskip("dgl")
        ref = dgl.nn.Set2Set(d, 2, 1)
        ref.lstm.load_state_dict(s2s.lstm.state_dict())
        g = dgl.batch([dgl.graph(([], []), num_nodes=3), dgl.graph(([], []), num_nodes=4)])
        assert torch.allclose(got, ref(g, x), atol=1e-6)
        # an empty segment (a graph without edges) reads out r = 0 and stays finite
        got3 = s2s(x, seg, 3)
        assert torch.isfinite(got3).all()
        assert torch.allclose(got3[2], _set2set_by_hand(s2s, [torch.zeros(0, d)])[0], atol=1e-6)


def test_segment_softmax_sums_to_one():
    score = torch.tensor([1.0, 2.0, 3.0, 100.0, -100.0])
    seg = torch.tensor([0, 0, 0, 2, 2])
    p = segment_softmax(score, seg, 3)
    assert torch.allclose(p[:3].sum(), torch.tensor(1.0)) and torch.allclose(p[3:].sum(), torch.tensor(1.0))
    assert torch.allclose(p[:3], torch.softmax(score[:3], 0))

"""Symmetry-reduced graphs (bench/quotient.py): the classes, the quotient batch, the weighted batch norm, and
ALIGNN computing the same function (values, gradients, running statistics) on the quotient as on the full graphs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bench.encoders import build_encoder
from bench.featurizers import build_featurizer
from bench.graphs import build_graph, collate
from bench.registry import ENCODERS
from bench.quotient import QuotientError, _check_equitable, quotient_of, reduction, refine
from bench.structures import Structure
from bench.encoders.layers import batch_norm
from fixture_data import load_fixture_structures

SMALL_ALIGNN = {"hidden": 24, "embedding_features": 8, "alignn_layers": 2, "gcn_layers": 2}


def rock_salt(a: float = 5.64, jitter: float = 0.0, seed: int = 0) -> Structure:
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]], dtype=float)
    frac = np.concatenate([fcc, fcc + [0.5, 0, 0]]) % 1.0
    frac = frac + np.random.default_rng(seed).normal(0, jitter, frac.shape)
    return Structure(np.eye(3) * a, frac, np.array([11] * 4 + [17] * 4), id="NaCl-conventional")


@pytest.fixture(scope="module")
def real_graphs():
    return [build_graph(s, "alignn") for s, _ in load_fixture_structures()[:24]]


def test_rock_salt_conventional_cell_reduces_to_its_primitive_cell():
    gd = build_graph(rock_salt(), "alignn")
    q = refine(gd.numbers, gd.src, gd.dst, gd.dist, gd.lg_src, gd.lg_dst, gd.cos)
    assert q.num_atom_classes == 2  # Na and Cl: all four of each are equivalent
    assert sorted(q.atom_size.tolist()) == [4, 4]
    # each atom's 12 nearest neighbour bonds (6 unlike at a/2, then like ones) collapse per (src, dst, length)
    assert q.num_edge_classes < gd.num_edges // 4
    assert q.trip_size.sum() == gd.num_lg_edges and q.edge_size.sum() == gd.num_edges


def test_no_symmetry_means_no_reduction():
    gd = build_graph(rock_salt(jitter=0.02, seed=1), "alignn")
    q = quotient_of(gd)
    assert q.num_atom_classes == gd.num_nodes
    assert q.num_edge_classes == gd.num_edges or q.num_edge_classes > 0.9 * gd.num_edges


def test_classes_are_consistent_on_real_structures(real_graphs):
    for gd in real_graphs:
        q = refine(gd.numbers, gd.src, gd.dst, gd.dist, gd.lg_src, gd.lg_dst, gd.cos)
        # members of a class share the input (within tolerance) and the classes of their endpoints
        assert np.all(gd.numbers == gd.numbers[q.atom_rep][q.atom_class])
        assert np.abs(gd.dist - gd.dist[q.edge_rep][q.edge_class]).max() <= 2e-5 + 1e-9
        assert np.all(q.atom_class[gd.src] == q.atom_class[gd.src[q.edge_rep]][q.edge_class])
        assert np.all(q.atom_class[gd.dst] == q.atom_class[gd.dst[q.edge_rep]][q.edge_class])
        assert np.abs(gd.cos - gd.cos[q.trip_rep][q.trip_class]).max() <= 2e-5 + 1e-9
        assert np.all(q.edge_class[gd.lg_src] == q.edge_class[gd.lg_src[q.trip_rep]][q.trip_class])
        assert np.all(q.edge_class[gd.lg_dst] == q.edge_class[gd.lg_dst[q.trip_rep]][q.trip_class])
        memo = quotient_of(gd)
        assert quotient_of(gd) is memo  # memoised, compact, the same classes
        assert memo.trip_class is None and memo.edge_class.dtype == np.int32
        for name in ("atom_class", "edge_class", "atom_rep", "edge_rep", "trip_rep", "trip_size"):
            assert np.array_equal(getattr(memo, name), getattr(q, name)), name
    r = reduction(quotient_of(gd) for gd in real_graphs)
    assert r["triplets"] > 1.5 and r["atoms"] > 1.0  # real crystals are symmetric


def test_input_clusters_never_span_more_than_twice_the_tolerance():
    from bench.quotient import _clusters

    chain = np.array([1.0, 1.000009, 1.000018, 1.000027, 1.000036, 2.0, 2.0000001, 0.5, 2.0 - 4e-6])
    labels = _clusters(chain, 1e-5)
    for k in np.unique(labels):
        assert np.ptp(chain[labels == k]) <= 2e-5
    assert labels[0] == labels[1] == labels[2] != labels[4]  # the chain is cut, not merged whole
    assert labels[5] == labels[6] == labels[8] and len(np.unique(labels)) == 4
    assert len(np.unique(_clusters(chain, 1e-12))) == 9  # distinct values, no tolerance: no merging


def test_non_equitable_partition_is_refused():
    # atoms 0 and 1 in one class, but only atom 0 has an incoming bond of class 0
    with pytest.raises(QuotientError, match="not equitable"):
        _check_equitable(np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([0, 1, 1]), "atom")
    with pytest.raises(QuotientError, match="not equitable"):  # same kinds, different counts
        _check_equitable(np.array([0, 0, 1]), np.array([0, 0, 1, 2]), np.array([0, 0, 0, 0]), "atom")
    _check_equitable(np.array([0, 0, 1]), np.array([0, 1, 2, 2]), np.array([0, 0, 1, 1]), "atom")


def test_quotient_batch_weights_add_up(real_graphs):
    b = collate([(gd, 0.0) for gd in real_graphs[:8]], quotient=True)
    q = b.q
    assert int(q.g.ndata["n"].sum()) == b.graph.num_nodes()
    assert int(q.g.edata["n"].sum()) == b.graph.num_edges()
    assert int(q.lg.edata["n"].sum()) == b.line.num_edges()
    assert torch.equal(q.g.batch_num_nodes().clamp(max=1), torch.ones(8, dtype=torch.int64))
    # the multiplicities entering a representative atom add up to its in-degree
    indeg_q = torch.zeros(q.g.num_nodes()).index_add_(0, q.g.edges()[1], q.g.edata["w"])
    indeg = b.graph.in_degrees().float()
    assert torch.allclose(indeg_q[q.atom_class], indeg)
    assert torch.equal(q.g.ndata["Z"][q.atom_class], b.graph.ndata["Z"])


def test_weighted_batch_norm_equals_batch_norm_on_repeated_rows():
    torch.manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1, 3, 2, 1, 4, 1, 2], dtype=torch.float64)
    bn_full, bn_w = torch.nn.BatchNorm1d(5).double(), torch.nn.BatchNorm1d(5).double()
    with torch.no_grad():
        bn_full.weight.uniform_(0.5, 2), bn_full.bias.uniform_(-1, 1)
    bn_w.load_state_dict(bn_full.state_dict())
    probe = torch.randn(7, 5, dtype=torch.float64)
    expanded = x.repeat_interleave(w.long(), dim=0)
    full = (bn_full(expanded) * probe.repeat_interleave(w.long(), dim=0)).sum()
    (gx_full,) = torch.autograd.grad(full, x)
    weighted = (batch_norm(bn_w, x, w) * probe * w.unsqueeze(1)).sum()
    (gx_w,) = torch.autograd.grad(weighted, x)
    assert torch.allclose(gx_full, gx_w, atol=1e-10)
    assert torch.allclose(full, weighted, atol=1e-10)
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(bn_full, k).double(), getattr(bn_w, k).double(), atol=1e-12), k
    bn_w.eval()
    assert torch.equal(batch_norm(bn_w, x, w), bn_w(x))  # eval: running statistics, weights unused


def _pair(structs, seed=0):
    torch.manual_seed(seed)
    full = build_encoder("alignn", build_featurizer("cgcnn"), SMALL_ALIGNN)
    return full, copy.deepcopy(full)


def test_alignn_on_the_quotient_is_the_same_function(real_graphs):
    items = [(gd, 0.0) for gd in real_graphs[:12]]
    bf, bq = collate(items), collate(items, quotient=True)
    assert bq.q.lg.num_edges() < bf.line.num_edges() / 1.5
    full, quot = _pair(items)
    for mode in ("train", "eval"):
        full.train(mode == "train"), quot.train(mode == "train")
        of, oq = full(bf), quot(bq)
        scale = float(of.pred.abs().max())
        assert torch.allclose(of.pred, oq.pred, atol=1e-4 * scale), (mode, (of.pred - oq.pred).abs().max())
        assert torch.allclose(of.node, oq.node, atol=1e-3), mode
        if mode == "train":
            (of.pred * torch.arange(1.0, 13.0)).sum().backward()
            (oq.pred * torch.arange(1.0, 13.0)).sum().backward()
    gnorm = torch.cat([p.grad.reshape(-1) for p in full.parameters() if p.grad is not None]).norm()
    for (name, pf), pq in zip(full.named_parameters(), quot.parameters()):
        assert (pf.grad is None) == (pq.grad is None), name
        if pf.grad is not None:
            assert (pf.grad - pq.grad).norm() < 1e-3 * gnorm, name
    for (name, bf_), bq_ in zip(full.named_buffers(), quot.buffers()):
        assert torch.allclose(bf_.float(), bq_.float(), atol=1e-4, rtol=1e-4), name


def test_atom_mask_takes_the_full_graphs(real_graphs):
    items = [(gd, 0.0) for gd in real_graphs[:6]]
    bf, bq = collate(items), collate(items, quotient=True)
    full, quot = _pair(items)
    full.eval(), quot.eval()
    mask = torch.zeros(bf.graph.num_nodes(), dtype=torch.bool)
    mask[::3] = True
    with torch.no_grad():
        assert torch.equal(full(bf, atom_mask=mask).pred, quot(bq, atom_mask=mask).pred)


def test_encoders_that_are_not_invariant_ignore_the_quotient():
    assert ENCODERS.get("alignn").supports_quotient
    assert not ENCODERS.get("cartnet").supports_quotient  # direction-dependent: classes would be wrong


def test_training_on_the_quotient_matches_the_full_graphs():
    """A real ALIGNN run on the bundled sample: same run identity, the same training, the reduction reported in
    the record (and absent when switched off). SGD, not Adam: Adam turns float32 noise in gradients that are
    zero in exact arithmetic (biases feeding a batch norm) into full +-lr steps, so two Adam runs that differ only
    in summation order drift apart by ~1e-3 on any CPU, and by how much depends on the CPU and thread count. With
    SGD the two agree to ~1e-7; a wrong weight anywhere in the quotient changes the first loss by far more."""
    from bench.records import validate_record
    from bench.runner import run_one

    base = {"task": "dft_3d_formation_energy_peratom", "encoder": "alignn", "features": "cgcnn",
            "data_dir": "sample", "epochs": 2, "train_limit": 24, "val_limit": 8, "test_limit": 8, "seed": 0,
            "device": "cpu", "encoder_options": SMALL_ALIGNN,
            "train_options": {"batch_size": 8, "optimizer": "sgd", "scheduler": "none", "lr": 0.01}}
    on = run_one(base)
    off = run_one(dict(base, train_options={**base["train_options"], "symmetry_reduce": False}))
    validate_record(on), validate_record(off)
    assert on["run_id"] == off["run_id"]
    assert on["train_settings"]["symmetry_reduce"] is True and off["train_settings"]["symmetry_reduce"] is False
    assert on["symmetry_reduction"]["triplets"] > 1.5 and off["symmetry_reduction"] is None
    assert on["curve"]["train_loss"][1] < 0.95 * on["curve"]["train_loss"][0]  # the weights did move
    np.testing.assert_allclose(on["curve"]["train_loss"], off["curve"]["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(on["curve"]["val_mae"], off["curve"]["val_mae"], rtol=1e-5)
    assert on["selected_epoch"] == off["selected_epoch"]
    np.testing.assert_allclose(on["predictions"]["predictions"], off["predictions"]["predictions"], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("name", [n for n in ENCODERS.list() if ENCODERS.get(n).supports_quotient])
def test_every_encoder_that_claims_the_quotient_computes_the_same_function(name):
    """The contract behind ``supports_quotient``, for every registered encoder that sets it, at its defaults."""
    spec = ENCODERS.get(name).graph_spec
    # perovskite plus larger cells, whose classes differ in size (so a missing weight shows)
    structs = load_fixture_structures()
    picked = [structs[1][0]] + [s for s, _ in structs if 8 <= len(s.numbers) <= 24][:5]
    items = [(build_graph(s, spec), 0.0) for s in picked]
    bf, bq = collate(items), collate(items, quotient=True)
    torch.manual_seed(0)
    full = build_encoder(name, build_featurizer("cgcnn"))
    with torch.no_grad():  # away from the initialisation, where e.graph. MEGNet's output barely depends on its state
        for p in full.parameters():
            p.normal_(0.0, 0.2)
    quot = copy.deepcopy(full)
    for mode in (True, False):
        full.train(mode), quot.train(mode)
        a, b = full(bf), quot(bq)
        scale = float(a.pred.abs().max()) + 1e-3
        assert torch.allclose(a.pred, b.pred, atol=1e-4 * scale), (name, mode)
        assert a.node.shape == b.node.shape and torch.allclose(a.node, b.node, atol=1e-3), (name, mode)
        if mode:
            weights = torch.linspace(1.0, 2.0, len(items))
            (a.pred * weights).sum().backward(), (b.pred * weights).sum().backward()
    grads = [(n, p.grad, q.grad) for (n, p), q in zip(full.named_parameters(), quot.parameters())]
    norm = torch.cat([g.reshape(-1) for _, g, _ in grads if g is not None]).norm()
    for n, gf, gq in grads:
        assert (gf is None) == (gq is None), n
        if gf is not None:
            assert (gf - gq).norm() < 1e-3 * norm, (name, n)


def test_classes_are_stored_beside_the_graph_cache_and_reused(tmp_path, real_graphs):
    from bench.quotient import classes_path, ensure_classes

    cache = tmp_path / "graphs" / "data-alignn-x.npz"
    fresh = [copy.copy(gd) for gd in real_graphs]  # no memo yet
    for gd in fresh:
        gd.__dict__.pop("_quotient", None)
    ensure_classes(fresh, cache)
    stored = classes_path(cache)
    assert stored.exists() and not list(stored.parent.glob("*.tmp"))
    again = [copy.copy(gd) for gd in real_graphs]
    for gd in again:
        gd.__dict__.pop("_quotient", None)
    import bench.quotient as bq

    calls = []
    real_refine = bq.refine
    bq.refine = lambda *a, **k: calls.append(1) or real_refine(*a, **k)
    try:
        ensure_classes(again, cache)  # read, not recomputed
    finally:
        bq.refine = real_refine
    assert not calls
    for a, b in zip(fresh, again):
        qa, qb = quotient_of(a), quotient_of(b)
        for name in ("atom_class", "edge_class", "atom_rep", "edge_rep", "trip_rep", "atom_size", "edge_size",
                     "trip_size"):
            assert np.array_equal(getattr(qa, name), getattr(qb, name)), name
    b1 = collate([(gd, 0.0) for gd in fresh[:5]], quotient=True)
    b2 = collate([(gd, 0.0) for gd in again[:5]], quotient=True)
    assert torch.equal(b1.q.lg.edata["w"], b2.q.lg.edata["w"]) and torch.equal(b1.q.atom_class, b2.q.atom_class)
    # classes stored for other graphs are refused and recomputed, never attached
    other = [copy.copy(gd) for gd in real_graphs[1:]]
    for gd in other:
        gd.__dict__.pop("_quotient", None)
    ensure_classes(other, cache)
    assert all(np.array_equal(quotient_of(o).atom_class, quotient_of(f).atom_class) for o, f in zip(other, fresh[1:]))


def _renumbered(s: Structure, seed: int) -> Structure:
    perm = np.random.default_rng(seed).permutation(len(s.numbers))
    return Structure(s.lattice, s.frac[perm], s.numbers[perm], id=s.id)


def test_stale_or_damaged_stored_classes_are_recomputed_not_used(tmp_path, caplog):
    """Classes stored beside a cache for the same real graphs with their atoms renumbered (same atom, bond and
    triplet counts) must not be attached: the reduced predictions must equal the full graphs'."""
    from bench.quotient import classes_path, ensure_classes

    structs = [s for s, _ in load_fixture_structures() if 4 <= len(s.numbers) <= 24][:8]
    cache = tmp_path / "graphs" / "task-cgcnn.npz"
    original = [build_graph(s, "cgcnn") for s in structs]
    ensure_classes(original, cache)
    renumbered = [build_graph(_renumbered(s, i), "cgcnn") for i, s in enumerate(structs)]
    assert [(a.num_nodes, a.num_edges) for a in original] == [(b.num_nodes, b.num_edges) for b in renumbered]
    assert any(not np.array_equal(quotient_of(a).atom_class, quotient_of(copy.copy(b)).atom_class)
               for a, b in zip(original, renumbered))  # the stored classes are wrong for these graphs
    with caplog.at_level("WARNING", logger="bench.quotient"):
        ensure_classes(renumbered, cache)
    assert "computed for other graphs" in caplog.text and classes_path(cache).name in caplog.text
    torch.manual_seed(0)
    model = build_encoder("cgcnn", build_featurizer("cgcnn"), {"hidden": 16, "layers": 2, "fc_hidden": 16}).eval()
    items = [(gd, 0.0) for gd in renumbered]
    with torch.no_grad():
        full, reduced = model(collate(items)).pred, model(collate(items, quotient=True)).pred
    assert torch.allclose(full, reduced, atol=1e-4 * float(full.abs().max())), (full - reduced).abs().max()
    # the file now holds these graphs' classes: read back without a warning
    caplog.clear()
    again = [copy.copy(gd) for gd in renumbered]
    for gd in again:
        gd.__dict__.pop("_quotient", None)
    with caplog.at_level("WARNING", logger="bench.quotient"):
        ensure_classes(again, cache)
    assert not caplog.text
    assert all(np.array_equal(quotient_of(a).atom_rep, quotient_of(b).atom_rep) for a, b in zip(again, renumbered))
    # a damaged file (valid npz, classes altered, same content key) is refused too
    with np.load(classes_path(cache), allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["atom_class"] = data["atom_class"][::-1].copy()
    with open(classes_path(cache), "wb") as fh:
        np.savez(fh, **data)
    for gd in again:
        gd.__dict__.pop("_quotient", None)
    with caplog.at_level("WARNING", logger="bench.quotient"):
        ensure_classes(again, cache)
    assert "checksum" in caplog.text
    assert all(np.array_equal(quotient_of(a).atom_class, quotient_of(b).atom_class) for a, b in zip(again, renumbered))

"""Crystal graphs (bench/graphs.py) against an independent brute-force neighbour enumeration on ~50 real JARVIS
structures, plus invariances, hand-computed bond-angle cosines, ALIGNN ties, DGL conversion/batching, the cache."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench import graphs as G
from bench.registry import GRAPH_SPECS, RegistryError
from bench.structures import Structure, StructureError
from fixture_data import load_fixture_structures
from bench.graphops import dgl_available

needs_dgl = pytest.mark.skipif(not dgl_available(), reason="dgl is not importable here (the DGL-free stack)")

SPECS = ("cgcnn", "alignn", "megnet", "cartnet")


@pytest.fixture(scope="module")
def fixture_structures():
    return [s for s, _ in load_fixture_structures()]


# ---- brute-force reference -------------------------------------------------------------------------------
def _brute_pairs(s: Structure, cutoff: float):
    """Every (src j, dst i, n, d) with 0 < d <= cutoff: a loop over centre atoms i, each against every atom j
    in every image of a fixed box. The box is conservative: a vector of length <= cutoff has fractional
    component k of at most cutoff / h_k (h_k the cell height), and fractional coordinates as given (not
    wrapped) differ by at most their spread, plus two images of margin."""
    lat, cart = s.lattice, s.frac @ s.lattice
    heights = 1.0 / np.linalg.norm(np.linalg.inv(lat).T, axis=1)
    spread = s.frac.max(axis=0) - s.frac.min(axis=0)
    nmax = np.ceil(cutoff / heights + spread).astype(int) + 2
    box = np.array(list(itertools.product(*[range(-m, m + 1) for m in nmax])))
    images = cart[:, None, :] + (box @ lat)[None, :, :]  # (j, image, 3)
    out = []
    for i in range(len(cart)):
        d = np.sqrt(((cart[i] - images) ** 2).sum(axis=-1))  # (j, image)
        ok = d <= cutoff
        ok[i] &= ~(box == 0).all(axis=1)  # not the atom itself
        for j, m in zip(*np.nonzero(ok)):
            out.append((int(j), i, tuple(int(x) for x in box[m]), float(d[j, m])))
    return out


def _brute_graph(s: Structure, name: str):
    """Reference edges (src, dst, n) -> distance for a spec, from _brute_pairs only."""
    spec = GRAPH_SPECS.get(name)
    n_atoms = s.num_atoms
    cutoff = spec.cutoff
    if spec.method == "radius":
        return {(a, b, n): d for a, b, n, d in _brute_pairs(s, cutoff)}, None
    while True:
        pairs = _brute_pairs(s, cutoff)
        per = [[p for p in pairs if p[1] == i] for i in range(n_atoms)]
        if spec.method == "nearest" or min(len(p) for p in per) >= spec.max_neighbors:
            break
        cutoff *= 2
    k = spec.max_neighbors
    edges = {}
    kth = {}
    for i, p in enumerate(per):
        p = sorted(p, key=lambda t: t[3])
        if spec.method == "nearest":
            kept = p[:k]
        else:
            kth[i] = p[k - 1][3]
            kept = [t for t in p if t[3] <= kth[i] + 1e-6]
        for a, b, n, d in kept:
            edges[(a, b, n)] = d
    if spec.undirected:
        for (a, b, n), d in list(edges.items()):
            edges[(b, a, tuple(-x for x in n))] = d
    return edges, per


def _edges_of(gd):
    return Counter((int(a), int(b), tuple(int(x) for x in n)) for a, b, n in zip(gd.src, gd.dst, gd.offsets))


@pytest.mark.parametrize("name", SPECS)
def test_matches_brute_force_on_real_structures(fixture_structures, name):
    checked = 0
    for s in fixture_structures:
        gd = G.build_graph(s, name)
        ref, per = _brute_graph(s, name)
        got = _edges_of(gd)
        assert max(got.values(), default=1) == 1, f"{s.id}: duplicate edge"
        # r = x_dst - (x_src + n L) and d = |r| for every edge
        cart = s.cart
        r = cart[gd.dst] - (cart[gd.src] + gd.offsets @ s.lattice)
        np.testing.assert_allclose(gd.vec, r, atol=1e-4)
        np.testing.assert_allclose(gd.dist, np.linalg.norm(r, axis=1), rtol=1e-6, atol=1e-5)
        if name == "cgcnn":
            # the kept distances per centre are the 12 smallest; which of several tied partners is kept may differ
            for i in range(s.num_atoms):
                want = sorted(t[3] for t in per[i])[:12]
                have = sorted(gd.dist[gd.dst == i].tolist())
                np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-5, err_msg=f"{s.id} atom {i}")
                if len(want) == 12:
                    firm = {(a, b, n) for a, b, n, d in per[i] if d < want[-1] - 1e-4}
                    assert firm <= set(got), f"{s.id}: a strictly nearer neighbour of atom {i} is missing"
        else:
            assert set(got) == set(ref), f"{s.id} [{name}]: edge sets differ " \
                f"(extra {sorted(set(got) - set(ref))[:3]}, missing {sorted(set(ref) - set(got))[:3]})"
            d_ref = np.array([ref[(int(a), int(b), tuple(int(x) for x in n))]
                              for a, b, n in zip(gd.src, gd.dst, gd.offsets)])
            np.testing.assert_allclose(gd.dist, d_ref, rtol=1e-6, atol=1e-5)
        checked += 1
    assert checked == len(fixture_structures) >= 45


def test_kdtree_path_equals_dense_path(fixture_structures):
    for s in fixture_structures:
        for name in SPECS:
            a = G.build_graph(s, name)
            b = G.build_graph(s, name, dense_limit=0)  # force the cKDTree search
            assert _edges_of(a) == _edges_of(b), (s.id, name)
            np.testing.assert_allclose(a.dist, b.dist, rtol=1e-6)


def test_fixture_covers_hard_cases(fixture_structures):
    sizes = [s.num_atoms for s in fixture_structures]
    assert min(sizes) == 1 and max(sizes) >= 60 and len(fixture_structures) >= 45
    heights = [1 / np.linalg.norm(np.linalg.inv(s.lattice).T, axis=1) for s in fixture_structures]
    aspect = [np.linalg.norm(s.lattice, axis=1).max() / h.min() for s, h in zip(fixture_structures, heights)]
    assert max(aspect) > 15  # strongly skewed / thin cells are in
    assert len((Path(__file__).parent / "fixtures" / "structures.json").read_bytes()) < 300_000


# ---- invariances -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SPECS)
def test_atom_permutation_permutes_edges(fixture_structures, name):
    rng = np.random.default_rng(1)
    for s in fixture_structures[:30]:
        perm = rng.permutation(s.num_atoms)  # new atom a is old atom perm[a]
        t = Structure(s.lattice, s.frac[perm], s.numbers[perm], id=s.id)
        a, b = G.build_graph(s, name), G.build_graph(t, name)
        if name == "cgcnn":  # tied partners may differ: compare per-atom distance lists
            for new in range(t.num_atoms):
                np.testing.assert_allclose(np.sort(b.dist[b.dst == new]), np.sort(a.dist[a.dst == perm[new]]),
                                           atol=1e-5)
            continue
        mapped = Counter((int(perm[x]), int(perm[y]), tuple(int(v) for v in n))
                         for x, y, n in zip(b.src, b.dst, b.offsets))
        assert mapped == _edges_of(a), s.id
        if a.cos is not None:
            np.testing.assert_allclose(np.sort(a.cos), np.sort(b.cos), atol=1e-5)


@pytest.mark.parametrize("name", SPECS)
def test_translation_invariance(fixture_structures, name):
    rng = np.random.default_rng(2)
    for s in fixture_structures[:30]:
        shift = rng.uniform(-3, 3, size=3)
        t = Structure(s.lattice, s.frac + shift, s.numbers, id=s.id)  # not wrapped: same images
        w = Structure(s.lattice, (s.frac + shift) % 1.0, s.numbers, id=s.id)  # wrapped: images change
        a, b, c = G.build_graph(s, name), G.build_graph(t, name), G.build_graph(w, name)
        if name != "cgcnn":
            assert _edges_of(a) == _edges_of(b), s.id
        for other in (b, c):
            key = lambda g: sorted(zip(g.dst.tolist(), np.round(g.dist, 4).tolist()))  # noqa: E731
            assert key(a) == key(other), s.id
            np.testing.assert_allclose(np.sort(a.vec, axis=0), np.sort(other.vec, axis=0), atol=1e-4)


# ---- hand-checked geometry ---------------------------------------------------------------------------------
def test_simple_cubic_alignn_by_hand():
    a = 3.0
    s = Structure(np.eye(3) * a, [[0.1, 0.2, 0.3]], [29], id="sc")
    gd = G.build_graph(s, "alignn")
    # 6 neighbours at a, then 12 at a*sqrt(2): the 12th distance lies in the second shell, so all 18 are kept
    assert gd.num_edges == 18
    np.testing.assert_allclose(np.sort(gd.dist), [a] * 6 + [a * np.sqrt(2)] * 12, rtol=1e-6)
    # in the one-atom cell every ordered pair of bonds meets at the atom: 18 x 18 pairs, less the 18 that join a
    # bond to itself (DGL's line graph never does). Bond e1 = k -> j gives the direction u = -r_e1 from j to k,
    # e2 = j -> i gives w = r_e2; e2 == e1 means w = -u. So the cosines are u.w over all ordered pairs of the 18
    # neighbour directions (listed here by hand) except w = -u.
    assert gd.num_lg_edges == 18 * 18 - 18
    dirs = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1),
            (1, 1, 0), (1, -1, 0), (-1, 1, 0), (-1, -1, 0), (1, 0, 1), (1, 0, -1),
            (-1, 0, 1), (-1, 0, -1), (0, 1, 1), (0, 1, -1), (0, -1, 1), (0, -1, -1)]
    u = np.array(dirs, float)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    uw = u @ u.T
    want = np.sort(uw[~np.isclose(uw, -1.0)])
    assert len(want) == 18 * 17
    np.testing.assert_allclose(np.sort(gd.cos), want, atol=1e-6)
    # one specific pair: bond from the +x image into the atom (e1 = k -> j, r_e1 = -a x), then the atom's
    # +y image to the atom (e2 = j -> i, r_e2 = -a y): the vectors from j are +a x and -a y: 90 degrees
    r = gd.vec.astype(float)
    e1 = int(np.flatnonzero(np.all(np.isclose(r, [-a, 0, 0]), axis=1))[0])
    e2 = int(np.flatnonzero(np.all(np.isclose(r, [0, -a, 0]), axis=1))[0])
    k = int(np.flatnonzero((gd.lg_src == e1) & (gd.lg_dst == e2))[0])
    assert abs(gd.cos[k]) < 1e-6
    # e2 = reverse of e1 (backtracking, r_e2 = +a x): the angle between a vector and itself, cos = 1
    e2 = int(np.flatnonzero(np.all(np.isclose(r, [a, 0, 0]), axis=1))[0])
    k = int(np.flatnonzero((gd.lg_src == e1) & (gd.lg_dst == e2))[0])
    assert gd.cos[k] == pytest.approx(1.0)


def test_rock_salt_angles_by_hand():
    # conventional rock-salt cell, a = 6 Å: each atom has 6 unlike nearest neighbours at a/2 = 3 Å, then 12 like
    # ones at a/sqrt(2) = 4.24 Å
    a = 6.0
    na = [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]]
    cl = [[.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]]
    s = Structure(np.eye(3) * a, na + cl, [11] * 4 + [17] * 4, id="NaCl")
    gd = G.build_graph(s, "megnet")  # radius 4 Å: exactly the 6 nearest
    assert gd.num_edges == 8 * 6
    assert np.all((s.numbers[gd.src] == 11) != (s.numbers[gd.dst] == 11))
    np.testing.assert_allclose(gd.dist, a / 2, rtol=1e-6)
    # ALIGNN: 6 at a/2 plus 12 like neighbours at a/sqrt(2); the 12th is in the second shell: 18 per atom
    ga = G.build_graph(s, "alignn")
    assert np.all(np.bincount(ga.dst) == 18) and np.all(np.bincount(ga.src) == 18)
    # angles at a centre between two of its 6 octahedral bonds: cos in {1 (same), 0 (x12), -1}, 36 pairs per
    # atom in total among the nearest bonds
    near = ga.dist < 3.5
    both = near[ga.lg_src] & near[ga.lg_dst]
    vals, counts = np.unique(np.round(ga.cos[both], 6), return_counts=True)
    assert dict(zip(vals.tolist(), counts.tolist())) == {-1.0: 8 * 6, 0.0: 8 * 24, 1.0: 8 * 6}


def test_alignn_ties_bcc_and_fcc():
    a = 2.87
    bcc = Structure(np.eye(3) * a, [[0, 0, 0], [.5, .5, .5]], [26, 26], id="bcc")
    # 8 at a*sqrt(3)/2, then 6 at a: the 12th neighbour is tied with 5 more, so 14 are kept
    gd = G.build_graph(bcc, "alignn")
    assert np.all(np.bincount(gd.dst) == 14)
    np.testing.assert_allclose(np.sort(gd.dist[gd.dst == 0]), [a * np.sqrt(3) / 2] * 8 + [a] * 6, rtol=1e-6)
    # cgcnn keeps exactly 12: the 8 nearest and 4 of the 6 tied ones
    gc = G.build_graph(bcc, "cgcnn")
    assert np.all(np.bincount(gc.dst) == 12)
    # primitive fcc: exactly 12 at a/sqrt(2), next shell (6 at a) not tied -> 12 kept
    af = 3.61
    fcc = Structure(np.array([[0, .5, .5], [.5, 0, .5], [.5, .5, 0]]) * af, [[0, 0, 0]], [29], id="fcc")
    gf = G.build_graph(fcc, "alignn")
    assert gf.num_edges == 12
    np.testing.assert_allclose(gf.dist, af / np.sqrt(2), rtol=1e-6)


def test_alignn_undirected_and_grows_cutoff():
    # sparse cell: a 1-atom cubic cell of 9 Å has no neighbour within 8 Å, the cutoff must grow
    s = Structure(np.eye(3) * 9.0, [[0, 0, 0]], [1], id="sparse")
    gd = G.build_graph(s, "alignn")
    assert gd.num_edges == 18 and gd.dist.min() == pytest.approx(9.0)
    # a real structure where k-NN is asymmetric: every edge has its reverse with the negated image
    for s, _ in load_fixture_structures()[:20]:
        g = G.build_graph(s, "alignn")
        e = set(_edges_of(g))
        assert all((b, a, tuple(-x for x in n)) in e for a, b, n in e), s.id
        assert np.all(np.bincount(g.dst, minlength=s.num_atoms) >= 12)


@needs_dgl
def test_isolated_atom_in_radius_graph():
    # two atoms 2 Å apart and a third far from both (and from its own images, 20 Å cell)
    s = Structure(np.eye(3) * 20.0, [[0, 0, 0], [0.1, 0, 0], [0.5, 0.5, 0.5]], [6, 8, 1], id="iso")
    gd = G.build_graph(s, "megnet")
    assert gd.num_edges == 2 and not np.any(gd.dst == 2) and not np.any(gd.src == 2)
    g, lg = G.to_dgl(gd)
    assert lg is None and g.num_nodes() == 3 and g.in_degrees()[2] == 0
    import dgl
    import torch

    g.ndata["h"] = torch.ones(3, 4)
    g.update_all(dgl.function.copy_u("h", "m"), dgl.function.mean("m", "agg"))
    assert torch.isfinite(g.ndata["agg"]).all()
    assert torch.isfinite(g.edata["d"]).all()


def test_bad_input_is_a_clear_error():
    with pytest.raises(G.GraphError, match="entry bad.*non-finite"):
        G.neighbor_pairs(np.eye(3) * 4, np.array([[0, np.nan, 0]]), 5.0, entry="bad")
    with pytest.raises(StructureError, match="nanny"):
        Structure(np.eye(3) * 4, [[0, np.nan, 0]], [1], id="nanny")
    overlap = Structure(np.eye(3) * 4, [[0, 0, 0], [0, 0, 1e-6]], [1, 1], id="JVASP-overlap")
    with pytest.raises(G.GraphError, match="JVASP-overlap.*overlap"):
        G.build_graph(overlap, "cartnet")
    with pytest.raises(RegistryError, match="Did you mean 'alignn'"):
        G.build_graph(overlap, "alignm")


# ---- DGL conversion and batching ---------------------------------------------------------------------------
@needs_dgl
def test_to_dgl_and_collate_match_dgl_batch(fixture_structures):
    import dgl
    import torch

    items = [(G.build_graph(s, "alignn"), float(k)) for k, s in enumerate(fixture_structures[:12])]
    batch = G.collate(items)
    ref_g = dgl.batch([G.to_dgl(gd)[0] for gd, _ in items])
    ref_lg = dgl.batch([G.to_dgl(gd)[1] for gd, _ in items])
    assert batch.num_graphs == 12 and batch.y.dtype == torch.float32 and batch.y.tolist() == list(range(12))
    for mine, ref in ((batch.g, ref_g), (batch.lg, ref_lg)):
        assert torch.equal(mine.batch_num_nodes(), ref.batch_num_nodes())
        assert torch.equal(mine.batch_num_edges(), ref.batch_num_edges())
        for a, b in zip(mine.edges(), ref.edges()):
            assert torch.equal(a, b)
    assert batch.g.ndata["Z"].dtype == torch.int64
    assert batch.g.edata["r"].shape == (batch.g.num_edges(), 3) and batch.g.edata["r"].dtype == torch.float32
    assert batch.g.edata["d"].dtype == torch.float32
    assert torch.equal(batch.lg.edata["cos"], ref_lg.edata["cos"])
    assert batch.lg.num_nodes() == batch.g.num_edges()
    # the index views hold the same graphs (what the encoders read; they need no DGL)
    for mine, ref in ((batch.graph, batch.g), (batch.line, batch.lg)):
        assert all(torch.equal(a, b) for a, b in zip(mine.edges(), ref.edges()))
        assert mine.ndata.keys() == ref.ndata.keys() and mine.edata.keys() == ref.edata.keys()
    # readout over the batch: mean Z per structure
    batch.g.ndata["z"] = batch.g.ndata["Z"].float()
    got = dgl.readout_nodes(batch.g, "z", op="mean")
    want = torch.tensor([float(gd.numbers.mean()) for gd, _ in items])
    assert torch.allclose(got, want)
    # the line graph is DGL's own line graph of the batched atom graph
    lg2 = dgl.line_graph(ref_g, backtracking=True)
    assert sorted(zip(*[t.tolist() for t in lg2.edges()])) == sorted(zip(*[t.tolist() for t in batch.lg.edges()]))
    moved = batch.to("cpu")
    assert moved.num_graphs == 12 and moved.lg is not None
    # targets: all None -> y None; mixed -> error
    assert G.collate([(gd, None) for gd, _ in items[:2]]).y is None
    with pytest.raises(ValueError, match="None"):
        G.collate([(items[0][0], None), (items[1][0], 1.0)])


def test_collate_with_edgeless_graph():
    lone = G.build_graph(Structure(np.eye(3) * 10, [[0, 0, 0]], [1], id="lone"), "megnet")
    other = G.build_graph(Structure(np.eye(3) * 3, [[0, 0, 0]], [3], id="li"), "megnet")
    b = G.collate([(lone, 1.0), (other, 2.0)])
    assert b.graph.batch_num_edges().tolist() == [0, 6] and b.graph.batch_num_nodes().tolist() == [1, 1]


# ---- cache -------------------------------------------------------------------------------------------------
def _same(a, b):
    for f in ("numbers", "src", "dst", "offsets", "vec", "dist", "lg_src", "lg_dst", "cos"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=f)
    assert a.id == b.id


def test_cache_hit_does_no_neighbour_search(fixture_structures, monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    first = G.load_graphs(fixture_structures, "alignn", "fixture", workers=1, progress=False)
    files = list((tmp_path / "graphs").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz" and "alignn" in files[0].name

    def boom(*a, **k):
        raise AssertionError("neighbour search on a cache hit")

    monkeypatch.setattr(G, "neighbor_pairs", boom)
    second = G.load_graphs(fixture_structures, "alignn", "fixture", workers=1, progress=False)
    assert len(second) == len(first) == len(fixture_structures)
    for a, b in zip(first, second):
        _same(a, b)
    # the cache is plain npz: loadable without pickle
    with np.load(files[0], allow_pickle=False) as z:
        assert "src" in z.files
    # a different dataset (one structure fewer) or spec misses the cache
    with pytest.raises(AssertionError, match="cache hit"):
        G.load_graphs(fixture_structures[:-1], "alignn", "fixture", workers=1, progress=False)
    with pytest.raises(AssertionError, match="cache hit"):
        G.load_graphs(fixture_structures, "cgcnn", "fixture", workers=1, progress=False)



def _rewrite(path, **changes):
    """Rewrite a cache file in place as a valid npz with some arrays changed (the name, and everything else, kept)."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data.update(changes)
    with open(path, "wb") as fh:
        np.savez(fh, **data)


def test_altered_cache_file_is_rebuilt_with_a_warning(fixture_structures, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    structs = fixture_structures[:12]
    fresh = G.load_graphs(structs, "cgcnn", "fixture", workers=1, progress=False)
    (path,) = (tmp_path / "graphs").iterdir()
    with np.load(path, allow_pickle=False) as z:
        dist, numbers = z["dist"].copy(), z["numbers"].copy()
    dist[5] *= 1.5  # a bond 50 % longer
    numbers[0] = 26 if numbers[0] != 26 else 8  # another element
    for changes in ({"dist": dist}, {"numbers": numbers}):
        _rewrite(path, **changes)
        caplog.clear()
        with caplog.at_level("WARNING", logger="bench.graphs"):
            again = G.load_graphs(structs, "cgcnn", "fixture", workers=1, progress=False)
        assert "does not hold the graphs of these 12 structures" in caplog.text and "checksum" in caplog.text
        assert path.name in caplog.text
        for a, b in zip(fresh, again):
            _same(a, b)
    # the rebuilt file is read back without a warning (and without a neighbour search)
    monkeypatch.setattr(G, "neighbor_pairs", lambda *a, **k: pytest.fail("neighbour search on a cache hit"))
    caplog.clear()
    with caplog.at_level("WARNING", logger="bench.graphs"):
        G.load_graphs(structs, "cgcnn", "fixture", workers=1, progress=False)
    assert not caplog.text and not list(path.parent.glob("*.tmp"))


def test_cache_swapped_for_another_datasets_is_rebuilt(fixture_structures, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    mine, other = fixture_structures[:20], fixture_structures[20:33]
    G.load_graphs(other, "cgcnn", "task-b", workers=1, progress=False)
    (theirs,) = (tmp_path / "graphs").iterdir()
    target = G.cache_path(mine, "cgcnn", "task-a")
    target.write_bytes(theirs.read_bytes())  # another task's (intact) cache under this task's name
    with caplog.at_level("WARNING", logger="bench.graphs"):
        out = G.load_graphs(mine, "cgcnn", "task-a", workers=1, progress=False)
    assert "built from other structures" in caplog.text and target.name in caplog.text
    assert len(out) == 20 and [g.id for g in out] == [s.id for s in mine]
    for a, s in zip(out, mine):
        _same(a, G.build_graph(s, "cgcnn"))
    # the same structures renamed (ids are part of what a cache holds) and an older file format
    renamed = [Structure(s.lattice, s.frac, s.numbers, id=f"{s.id}-copy") for s in mine]
    G.cache_path(renamed, "cgcnn", "task-a").write_bytes(target.read_bytes())
    caplog.clear()
    with caplog.at_level("WARNING", logger="bench.graphs"):
        out = G.load_graphs(renamed, "cgcnn", "task-a", workers=1, progress=False)
    assert "built from other structures" in caplog.text and out[0].id == mine[0].id + "-copy"
    _rewrite(target, format=np.array("1"))
    caplog.clear()
    with caplog.at_level("WARNING", logger="bench.graphs"):
        assert len(G.load_graphs(mine, "cgcnn", "task-a", workers=1, progress=False)) == 20
    assert "cache format '1'" in caplog.text


def test_interrupted_build_leaves_no_cache(fixture_structures, monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    real = G.build_graph
    calls = {"n": 0}

    def flaky(s, spec, **kw):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt  # an interrupt midway
        return real(s, spec, **kw)

    monkeypatch.setattr(G, "build_graph", flaky)
    with pytest.raises(KeyboardInterrupt):
        G.load_graphs(fixture_structures, "megnet", "fixture", workers=1, progress=False)
    assert not (tmp_path / "graphs").exists() or not any((tmp_path / "graphs").iterdir())
    # a failure while writing the file leaves nothing either
    monkeypatch.setattr(G, "build_graph", real)

    def bad_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(G.np, "savez", bad_savez)
    with pytest.raises(OSError, match="disk full"):
        G.load_graphs(fixture_structures, "megnet", "fixture", workers=1, progress=False)
    assert not any((tmp_path / "graphs").iterdir())


def test_on_error_skip_is_counted_and_cached(fixture_structures, monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    bad = Structure(np.eye(3) * 4, [[0, 0, 0], [0, 0, 1e-6]], [1, 1], id="JVASP-bad")
    data = list(fixture_structures[:5]) + [bad] + list(fixture_structures[5:8])
    with pytest.raises(G.GraphError, match=r"structure 5 \(JVASP-bad\)"):
        G.load_graphs(data, "cartnet", "mixed", workers=1, progress=False)
    out = G.load_graphs(data, "cartnet", "mixed", workers=1, progress=False, on_error="skip")
    assert len(out) == 8 and out.kept.tolist() == [0, 1, 2, 3, 4, 6, 7, 8]
    assert [s[:2] for s in out.skipped] == [(5, "JVASP-bad")] and "overlap" in out.skipped[0][2]
    assert [g.id for g in out] == [data[i].id for i in out.kept]
    again = G.load_graphs(data, "cartnet", "mixed", workers=1, progress=False, on_error="skip")
    assert again.kept.tolist() == out.kept.tolist() and again.skipped == out.skipped
    with pytest.raises(G.GraphError, match="JVASP-bad"):
        G.load_graphs(data, "cartnet", "mixed", workers=1, progress=False)
    with pytest.raises(ValueError, match="Did you mean 'skip'"):
        G.load_graphs(data, "cartnet", "mixed", on_error="skp")


def test_parallel_build_equals_serial(fixture_structures):
    ser = G.build_graphs(fixture_structures, "cgcnn", workers=1, progress=False)
    par = G.build_graphs(fixture_structures, "cgcnn", workers=2, progress=False)
    assert len(ser) == len(par) == len(fixture_structures)
    for a, b in zip(ser, par):
        _same(a, b)


def test_specs_registered():
    assert set(SPECS) <= set(GRAPH_SPECS.list())
    al = GRAPH_SPECS.get("alignn")
    assert (al.cutoff, al.max_neighbors, al.undirected, al.line_graph) == (8.0, 12, True, True)
    assert GRAPH_SPECS.get("cartnet").cutoff == 5.0 and GRAPH_SPECS.get("megnet").cutoff == 4.0
    cg = GRAPH_SPECS.get("cgcnn")
    assert (cg.method, cg.cutoff, cg.max_neighbors, cg.undirected) == ("nearest", 8.0, 12, False)


# ---- CLI -----------------------------------------------------------------------------------------------------
def test_cli_build_from_source(tmp_path):
    rows = json.loads((Path(__file__).parent / "fixtures" / "structures.json").read_text())["entries"][:10]
    src = tmp_path / "mini.json"
    src.write_text(json.dumps(rows))
    from bench.cli import main

    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["graphs", "build", "--spec", "alignn", "--source", str(src), "--workers", "1", "--json",
                   "--no-progress"])
    assert rc == 0
    out = json.loads(buf.getvalue())
    want = G.edge_summary(G.build_graph(Structure.from_jarvis(r["atoms"], r["jid"]), "alignn") for r in rows)
    assert out["structures"] == 10 and out["edges"] == want["edges"]
    assert out["line_graph_edges"] == want["line_graph_edges"] > 0
    assert main(["graphs", "build", "--spec", "alignm", "--source", str(src)]) == 2


def test_cli_build_task_sample():
    """The bundled sample task through the real entry point (subprocess, as a user runs it)."""
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "graphs", "build", "--spec", "megnet", "--task",
                           "dft_3d_formation_energy_peratom", "--data-dir", "sample", "--limit", "20",
                           "--workers", "1", "--json", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["structures"] == 20 and out["edges"] > 0 and out["structures_per_s"] > 0


def test_extremely_skewed_cell_matches_brute_force():
    # b nearly parallel to a (2 degrees) and c tilted far over a: perpendicular heights ~0.1-0.3 Å, so many
    # images per axis are needed; the reduced form of this lattice is nothing like the given one
    t = np.deg2rad(2.0)
    lat = np.array([[3.0, 0.0, 0.0], [3.0 * np.cos(t), 3.0 * np.sin(t), 0.0], [7.0, 0.4, 2.5]])
    s = Structure(lat, [[0.1, 0.2, 0.3], [0.6, 0.5, 0.9]], [14, 8], id="skewed")
    for name in ("cartnet", "alignn", "megnet"):
        gd = G.build_graph(s, name)
        ref, _ = _brute_graph(s, name)
        assert set(_edges_of(gd)) == set(ref) and gd.num_edges == len(ref), name
        assert _edges_of(G.build_graph(s, name, dense_limit=0)) == _edges_of(gd)


@needs_dgl
def test_dgl_graphs_do_not_share_memory_with_graph_data(fixture_structures):
    gd = G.build_graph(fixture_structures[0], "alignn")
    before = (gd.numbers.copy(), gd.vec.copy(), gd.cos.copy())
    g, lg = G.to_dgl(gd)
    g.ndata["Z"][:] = 0
    g.edata["r"] *= 0
    lg.edata["cos"] *= 0
    b = G.collate([(gd, 1.0)])
    b.graph.ndata["Z"][:] = 0
    b.graph.edata["r"] *= 0
    for x, y in zip(before, (gd.numbers, gd.vec, gd.cos)):
        np.testing.assert_array_equal(x, y)


def test_line_graph_rebuilt_from_cache_in_chunks(fixture_structures, tmp_path):
    graphs = [G.build_graph(s, "alignn") for s in fixture_structures]
    path = tmp_path / "g.npz"
    G.save_graphs(path, graphs, np.arange(len(graphs)))
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
        assert "lg_src" not in z.files  # not stored: rebuilt on read
    for chunk in (1, 300, 10 ** 9):  # one graph per chunk (a graph larger than the chunk), several, all
        s, d, c = G._line_graphs_of(data, chunk_edges=chunk)
        np.testing.assert_array_equal(s, np.concatenate([g.lg_src for g in graphs]))
        np.testing.assert_array_equal(d, np.concatenate([g.lg_dst for g in graphs]))
        np.testing.assert_array_equal(c, np.concatenate([g.cos for g in graphs]))


def test_empty_input(monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    for name in ("alignn", "cgcnn"):
        out = G.load_graphs([], name, "empty", workers=2, progress=False)
        assert len(out) == 0 and out.skipped == [] and len(G.load_graphs([], name, "empty", progress=False)) == 0
    with pytest.raises(ValueError, match="empty batch"):
        G.collate([])


def _handlers() -> tuple:
    import signal

    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


def test_the_builders_pool_workers_do_not_keep_the_parents_signal_handlers():
    """A Python SIGTERM handler that returns (a test's guard, Ray's, a sweep's) is inherited by forked pool
    workers, and a worker that survives SIGTERM leaves Pool.terminate waiting forever (seen once on Python 3.13
    in CI order): the builders' workers reset SIGTERM to the default and leave SIGINT to the parent."""
    import multiprocessing as mp
    import signal

    old = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        with mp.get_context("fork").Pool(1, initializer=G._pool_worker_init) as pool:
            term, intr = pool.apply(_handlers)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert term == signal.SIG_DFL and intr == signal.SIG_IGN

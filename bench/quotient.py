"""Symmetry-reduced graphs: equivalence classes of atoms, bonds and bond-angle triplets of one crystal graph.

An invariant message-passing network whose inputs are atomic numbers, bond lengths and angle cosines, and whose
aggregations are sums (or means) over incoming edges (ALIGNN is one), computes the same features on two atoms,
two bonds or two triplets that colour refinement (1-dimensional Weisfeiler-Leman, run jointly on the atom graph
and its line graph) cannot tell apart: by induction over layers, equal inputs and equal multisets of incoming
(neighbour, edge) classes give equal outputs. Crystal graphs are highly symmetric (Wyckoff orbits, site
symmetry), so such a network can be evaluated on one representative per class, with

- each quotient edge carrying its multiplicity (how many edges of that class enter one member of the
  destination class) in the sums,
- batch-norm statistics and mean pooling weighted by class sizes.

That is the same function of the parameters, so values and gradients match the full graph up to float rounding
(tests/test_quotient.py). Inputs equal to within ``QUOTIENT_TOL`` (Å for distances, unitless for cosines) are
treated as equal (a class never spans more than twice that), and the representative's value is used: about
the spread of symmetry-equivalent values in relaxed JARVIS structures, which store 5-6 significant figures. Refinement runs once per graph (memoised on the GraphData); its partition is verified equitable
before use, so a hash collision can never silently change the function.

Numpy only; ``bench.graphs.collate(..., quotient=True)`` builds the DGL quotient graphs from these classes.
``ensure_classes`` stores them beside the graph cache, so the trials of a sweep compute them once per dataset;
stored classes are keyed by the content of the graphs they were computed for, and never attached to others.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

# Bump whenever the classes of a graph would change (refinement, tolerance handling): stored classes are ignored.
QUOTIENT_CODE_VERSION = "1"

# Inputs (distances in Å, cosines) closer than this are one class; single linkage over sorted values, so values
# straddling a rounding boundary are never split.
QUOTIENT_TOL = 1e-5
# Refinement stops when no class splits; crystal graphs settle in 2-5 rounds, this is a safety bound.
MAX_ROUNDS = 64


class QuotientError(RuntimeError):
    """The partition found is not equitable (a hash collision): the quotient would change the function."""


@dataclass(eq=False)
class Quotient:
    """Classes of one graph. ``*_class`` map members to classes (0..K-1); ``*_rep`` is each class's first member;
    ``*_size`` its number of members."""

    atom_class: np.ndarray
    edge_class: np.ndarray
    trip_class: np.ndarray | None
    atom_rep: np.ndarray
    edge_rep: np.ndarray
    trip_rep: np.ndarray | None
    atom_size: np.ndarray
    edge_size: np.ndarray
    trip_size: np.ndarray | None
    rounds: int

    @property
    def num_atom_classes(self) -> int:
        return len(self.atom_rep)

    @property
    def num_edge_classes(self) -> int:
        return len(self.edge_rep)

    @property
    def num_trip_classes(self) -> int:
        return 0 if self.trip_rep is None else len(self.trip_rep)


def _clusters(x: np.ndarray, tol: float) -> np.ndarray:
    """Labels of clusters of the values ``x``: single linkage at distance ``tol`` (sorted-gap splitting), with
    chains wider than ``2 tol`` cut greedily, so no cluster spans more than ``2 tol``."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.concatenate([[True], np.diff(xs) > tol])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(xs))
    for a, b in zip(starts, ends):
        if xs[b - 1] - xs[a] > 2 * tol:  # rare: a chain of close values; restart where it drifts too far
            first = xs[a]
            for i in range(a + 1, b):
                if xs[i] - first > 2 * tol:
                    new[i], first = True, xs[i]
    labels = np.empty(len(x), dtype=np.int64)
    labels[order] = np.cumsum(new) - 1
    return labels


def _dense(x: np.ndarray) -> np.ndarray:
    """Ranks 0..K-1 of the distinct values of ``x`` (in value order)."""
    return np.unique(x, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _pack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One int64 key per row (a, b) of non-negative integers, ordered as the rows are (lexicographically)."""
    a, b = a.astype(np.int64, copy=False), b.astype(np.int64, copy=False)
    if len(a) and (int(a.max()) + 1) * (int(b.max()) + 1) >= 2**62:
        a, b = _dense(a), _dense(b)  # ranks < len(a): the product fits
    return a * (int(b.max()) + 1 if len(b) else 1) + b


def _relabel(*cols: np.ndarray) -> np.ndarray:
    """Dense ids 0..K-1 of the distinct rows of the given integer columns (ordered by row value). Packed 1-d keys
    (a sort of int64), not ``np.unique(axis=0)``, which sorts rows as records and is several times slower."""
    if len(cols[0]) == 0:
        return np.zeros(0, dtype=np.int64)
    key = None
    for c in cols:
        c = np.asarray(c).astype(np.int64, copy=False)
        c = c if c.min() >= 0 else _dense(c)
        key = c if key is None else _pack(key, c)
    return _dense(key)


def _multiset_hash(group: np.ndarray, key: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per group, an order-free hash of the multiset of its keys: the wrapping sum of random 64-bit codes."""
    kid = _relabel(key)
    codes = rng.integers(0, 2**63 - 1, size=int(kid.max()) + 1 if len(kid) else 0, dtype=np.int64).astype(np.uint64)
    out = np.zeros(n, dtype=np.uint64)
    np.add.at(out, group, codes[kid])
    return out.view(np.int64)


def _classes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first member, size) of each class 0..K-1."""
    k = int(labels.max()) + 1 if len(labels) else 0
    rep = np.full(k, len(labels), dtype=np.int64)
    np.minimum.at(rep, labels, np.arange(len(labels), dtype=np.int64))
    return rep, np.bincount(labels, minlength=k).astype(np.int64)


def _check_equitable(member_class: np.ndarray, in_group: np.ndarray, in_class: np.ndarray, what: str) -> None:
    """Every member of a class has the same number of incoming items of each class (zero included)."""
    if len(in_group) == 0:
        return
    in_group, in_class = in_group.astype(np.int64, copy=False), in_class.astype(np.int64, copy=False)
    _, first, counts = np.unique(_pack(in_group, in_class), return_index=True, return_counts=True)
    group = in_group[first]  # one row per (member, incoming class) present
    _, cls_first, cls_pair = np.unique(_pack(member_class[group], in_class[first]), return_index=True,
                                       return_inverse=True)  # (member class, incoming class)
    cls_pair = cls_pair.reshape(-1)
    same_count = len(np.unique(_pack(cls_pair, counts))) == len(cls_first)
    members_with = np.bincount(cls_pair)  # members of the class that have such incoming items
    all_have = np.array_equal(members_with, np.bincount(member_class)[member_class[group[cls_first]]])
    if not (same_count and all_have):
        raise QuotientError(f"colour refinement: the {what} classes are not equitable (a hash collision); "
                            "run without the symmetry reduction")


def refine(
    numbers: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    dist: np.ndarray,
    lg_src: np.ndarray | None = None,
    lg_dst: np.ndarray | None = None,
    cos: np.ndarray | None = None,
    tol: float = QUOTIENT_TOL,
) -> Quotient:
    """Coarsest equitable partition (colour refinement) of atoms, directed bonds and (if given) line-graph edges.

    Atoms start from Z, bonds from their length and their two atoms' classes, triplets from their cosine and their
    two bonds' classes. Each round: a bond's class joins its own and the multiset of (triplet, source bond) classes
    entering it in the line graph; an atom's joins its own and the multiset of (bond, source atom) classes entering
    it; then a bond's joins its two atoms' new classes, and a triplet's its two bonds'. Stops when no class splits.
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    n, e = len(numbers), len(src)
    has_lg = lg_src is not None
    rng = np.random.default_rng(0x5EED)  # fixed: the same graph always gets the same classes
    ca = _relabel(np.asarray(numbers, dtype=np.int64))
    ce = _clusters(dist, tol)
    ce = _relabel(ce, ca[src], ca[dst])
    if has_lg:
        ls = np.asarray(lg_src, dtype=np.int64)
        ld = np.asarray(lg_dst, dtype=np.int64)
        ct = _relabel(_clusters(cos, tol), ce[ls], ce[ld])
    sizes = (-1, -1, -1)
    rounds = 0
    while rounds < MAX_ROUNDS:
        rounds += 1
        # (bond classes already determine their endpoints' classes: set at the end of the previous round)
        if has_lg:
            key = ct * (int(ce.max()) + 1) + ce[ls]
            ce = _relabel(ce, _multiset_hash(ld, key, e, rng))
        key = ce * (int(ca.max()) + 1) + ca[src]
        ca = _relabel(ca, _multiset_hash(dst, key, n, rng))
        ce = _relabel(ce, ca[src], ca[dst])
        if has_lg:
            ct = _relabel(ct, ce[ls], ce[ld])
        new = (int(ca.max()) + 1 if n else 0, int(ce.max()) + 1 if e else 0, int(ct.max()) + 1 if has_lg and len(ct) else 0)
        if new == sizes:
            break
        sizes = new
    _check_equitable(ca, dst, ce, "atom")
    if has_lg:
        _check_equitable(ce, ld, ct, "bond")
    atom_rep, atom_size = _classes(ca)
    edge_rep, edge_size = _classes(ce)
    trip_rep = trip_size = None
    if has_lg:
        trip_rep, trip_size = _classes(ct)
    return Quotient(ca, ce, ct if has_lg else None, atom_rep, edge_rep, trip_rep, atom_size, edge_size, trip_size,
                    rounds)


def quotient_of(gd, tol: float = QUOTIENT_TOL) -> Quotient:
    """The classes of a ``bench.graphs.GraphData``, computed once per object and tolerance (memoised on it).

    The memo is compact (int32, and no per-triplet class map: building the quotient batch needs only the
    triplet classes' representatives and sizes): 5.3 kB per dft_3d structure on average instead of 23.5 kB
    (a cached ALIGNN graph is 23.7 kB)."""
    memo = getattr(gd, "_quotient", None)
    if memo is not None and memo[0] == tol:
        return memo[1]
    q = refine(gd.numbers, gd.src, gd.dst, gd.dist, gd.lg_src, gd.lg_dst, gd.cos, tol)

    def small(a):
        return None if a is None else a.astype(np.int32)

    q = Quotient(small(q.atom_class), small(q.edge_class), None, small(q.atom_rep), small(q.edge_rep),
                 small(q.trip_rep), small(q.atom_size), small(q.edge_size), small(q.trip_size), q.rounds)
    gd._quotient = (tol, q)
    return q


def reduction(quotients) -> dict[str, float]:
    """Members / classes of atoms, bonds and triplets summed over graphs (how much work the quotient saves)."""
    qs = list(quotients)
    out = {}
    for what, cls, size in (("atoms", "atom_rep", "atom_size"), ("bonds", "edge_rep", "edge_size"),
                            ("triplets", "trip_rep", "trip_size")):
        members = sum(int(getattr(q, size).sum()) for q in qs if getattr(q, size) is not None)
        classes = sum(len(getattr(q, cls)) for q in qs if getattr(q, cls) is not None)
        if classes:
            out[what] = members / classes
    return out


_MEMO_FIELDS = ("atom_class", "edge_class", "atom_rep", "edge_rep", "trip_rep", "atom_size", "edge_size",
                "trip_size")


def classes_path(graph_cache: str | Path, tol: float = QUOTIENT_TOL) -> Path:
    """Where the classes of the graphs cached at ``graph_cache`` are stored (beside it)."""
    p = Path(graph_cache)
    return p.with_name(f"{p.stem}-classes-tol{tol:g}-q{QUOTIENT_CODE_VERSION}.npz")


# What the classes of a graph are a function of, with fixed dtypes (cached graphs hold int32, built ones int64).
_CONTENT = (("numbers", np.int64), ("src", np.int32), ("dst", np.int32), ("dist", np.float32),
            ("lg_src", np.int32), ("lg_dst", np.int32), ("cos", np.float32))


def graphs_digest(graphs: Sequence, tol: float = QUOTIENT_TOL) -> str:
    """A hash of the tolerance and of every graph's elements, bonds, distances, line graph and cosines: the key
    that stored classes must match (about 0.09 ms per dft_3d ALIGNN graph, some 50x less than computing them)."""
    h = hashlib.blake2b(digest_size=32)
    h.update(f"tol={tol!r};n={len(graphs)};".encode())
    for gd in graphs:
        h.update(np.array([gd.num_nodes, gd.num_edges, gd.num_lg_edges, gd.lg_src is not None], np.int64).tobytes())
        for name, dtype in _CONTENT:
            a = getattr(gd, name)
            if a is not None:
                h.update(np.ascontiguousarray(a, dtype=dtype).view(np.uint8))
    return h.hexdigest()


def ensure_classes(graphs: Sequence, graph_cache: str | Path | None, tol: float = QUOTIENT_TOL) -> None:
    """Memoise the classes of every graph, read from beside the graph cache when stored there, else computed and
    stored (atomically: concurrent trials may race, each writes a complete file). ``graph_cache`` None: compute
    only. Stored classes are keyed by the graphs' content (``graphs_digest``) and checksummed: classes stored
    for other graphs (atoms renumbered, another dataset under the same name) or damaged are never attached; they
    are recomputed, with a warning, and replaced."""
    from bench.graphs import arrays_checksum
    from bench.paths import atomic_path

    graphs = list(graphs)
    if all(getattr(gd, "_quotient", (None,))[0] == tol for gd in graphs):
        return
    path = None if graph_cache is None else classes_path(graph_cache, tol)
    digest = None if path is None else graphs_digest(graphs, tol)
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            if "graphs_digest" not in data:
                raise ValueError("stored by an older crysbench, without a content key")
            if str(data["graphs_digest"]) != digest:
                raise ValueError("computed for other graphs: different atoms, order, bonds or inputs")
            if str(data["checksum"]) != arrays_checksum(data):
                raise ValueError("the arrays do not match their stored checksum (altered or damaged)")
            stored = _stored_quotients(graphs, data)
        except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as e:
            log.warning("symmetry classes stored in %s do not fit these %d graphs (%s); recomputing them",
                        path, len(graphs), e)
        else:
            for gd, q in zip(graphs, stored):
                gd._quotient = (tol, q)
            return
    qs = [quotient_of(gd, tol) for gd in graphs]
    if path is None:
        return
    counts = {
        "n_atoms": [gd.num_nodes for gd in graphs], "n_edges": [gd.num_edges for gd in graphs],
        "n_trips": [gd.num_lg_edges for gd in graphs], "n_acls": [q.num_atom_classes for q in qs],
        "n_ecls": [q.num_edge_classes for q in qs], "n_tcls": [q.num_trip_classes for q in qs],
        "rounds": [q.rounds for q in qs],
    }
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in counts.items()}
    for f in _MEMO_FIELDS:
        parts = [getattr(q, f) for q in qs if getattr(q, f) is not None]
        arrays[f] = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, dtype=np.int32)
    arrays["graphs_digest"] = np.array(digest)
    arrays["checksum"] = np.array(arrays_checksum(arrays))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _stored_quotients(graphs: Sequence, data: dict) -> list[Quotient]:
    """The classes in a file written by ``ensure_classes``, one Quotient per graph."""
    n = len(graphs)
    if len(data["n_atoms"]) != n:
        raise ValueError(f"{len(data['n_atoms'])} graphs stored, {n} given")
    mine = np.array([[gd.num_nodes, gd.num_edges, gd.num_lg_edges] for gd in graphs], dtype=np.int64).reshape(n, 3)
    if not np.array_equal(mine, np.stack([data["n_atoms"], data["n_edges"], data["n_trips"]], axis=1)):
        raise ValueError("the stored graphs' sizes differ from these graphs")
    sizes = {"atom_class": data["n_atoms"], "edge_class": data["n_edges"], "atom_rep": data["n_acls"],
             "atom_size": data["n_acls"], "edge_rep": data["n_ecls"], "edge_size": data["n_ecls"],
             "trip_rep": data["n_tcls"], "trip_size": data["n_tcls"]}
    for f, counts in sizes.items():
        if len(data[f]) != int(np.sum(counts)):
            raise ValueError(f"{f}: {len(data[f])} values stored for {int(np.sum(counts))}")
    split = {f: np.split(data[f], np.cumsum(sizes[f])[:-1]) if n else [] for f in _MEMO_FIELDS}
    out = []
    for i, gd in enumerate(graphs):
        parts = {f: split[f][i] for f in _MEMO_FIELDS}
        if gd.lg_src is None:
            parts["trip_rep"] = parts["trip_size"] = None
        out.append(Quotient(parts["atom_class"], parts["edge_class"], None, parts["atom_rep"], parts["edge_rep"],
                            parts["trip_rep"], parts["atom_size"], parts["edge_size"], parts["trip_size"],
                            int(data["rounds"][i])))
    return out

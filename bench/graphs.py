"""Periodic crystal graphs for the four encoders, their on-disk cache, and batching (index tensors for
``bench.graphops``; the DGL graphs on demand).

Conventions (docs/ARCHITECTURE.md): an edge j -> i has DGL ``src = j`` and ``dst = i`` (messages aggregate at
the centre i). ``offsets[e] = n`` is the integer lattice image of j, and

    r_ij = x_i - (x_j + n @ lattice)      (Cartesian vector from j's image to i),   d_ij = |r_ij|.

Graph specs (registered in ``bench.registry.GRAPH_SPECS``):

* ``cgcnn``  all neighbours within 8 Å sorted by distance, the 12 nearest kept (Xie & Grossman, PRL 120,
  145301, 2018). The reference pads atoms with fewer than 12 neighbours with a fake neighbour; we keep only
  real edges. Ties at the 12th distance are broken deterministically by (distance rounded to 1e-6 Å, src,
  image), so the kept *distances* never depend on atom order, the kept tied partner may.
* ``alignn`` 12 nearest neighbours *with ties* (every neighbour up to and including the 12th distance, within
  ``TIE_TOL`` = 1e-6 Å of float noise), cutoff 8 Å grown x1.5 until every atom has 12 (Choudhary & DeCost, npj
  Comput Mater 7, 185, 2021). The result does not depend on the final cutoff, only on the 12th distances.
  Note on ties: the JARVIS structures carry 5-6 significant figures, so symmetry-equivalent distances differ
  by up to ~1e-4 Å and such "ties" are split by the data, here as in alignn (which compares floats exactly).
  A larger tolerance would keep more of those shells but agrees less with alignn (on 400 random dft_3d
  structures, identical edge multisets: 243 with tolerance 0, 273 with 1e-6, 240 with 1e-5, 211 with 1e-4);
  where the two differ it is only in atoms' 12th-neighbour shells (benchmarks/graphs.py checks this).
  The union of these directed edges and their reverses is taken; the reverse of (j -> i, n) is
  (i -> j, -n), so a self-image bond (i -> i, n) has reverse (i -> i, -n) and each directed bond appears once.
  (alignn 2026.8.11's ``canonize_edge`` stores (i, i, n) and (i, i, -n) as two keys and then adds both
  directions of each, so its graph holds every self-image bond twice; we do not reproduce that duplication.)
  Line graph: nodes are the directed bonds (in edge order); an edge (k -> j) -> (j -> i) joins every pair of
  consecutive bonds, backtracking included, as ``dgl.line_graph(g, backtracking=True, shared=True)``; like DGL,
  a bond is never joined to itself (a self-image bond i -> i would otherwise follow itself).
  Its feature is the cosine of the bond angle at j,

      cos = (-r_e1) . r_e2 / (|r_e1| |r_e2|),  e1 = k -> j, e2 = j -> i,

  i.e. the angle between the vectors from j to k and from j to i; clamped to [-1, 1]. alignn's
  ``compute_bond_cosines`` uses the same formula with its edge vector also pointing src -> dst, so the values
  agree.
* ``megnet`` all neighbours within 4 Å (Chen et al., Chem. Mater. 31, 3564, 2019).
* ``cartnet`` all neighbours within 5 Å, multi-edges to several images of one atom and self-images kept
  (Solé et al., Digital Discovery 2025).

Radius graphs use ``d <= cutoff``; an atom without neighbours stays an isolated node. Edges are grouped by
centre (dst); within a centre they are sorted by distance, then src, then image (cgcnn, megnet, cartnet) or by
src, then image (alignn).

Cache (``load_graphs``): one ``.npz`` per (dataset key, spec, structures fingerprint, ``GRAPH_CODE_VERSION``)
under ``cache_dir()/graphs``, concatenated arrays + per-graph counts, read with ``allow_pickle=False``,
written atomically; the line graph is rebuilt on read (bit-identical), not stored. The file also holds a full
hash of the structures it was built from (ids included) and a checksum of its arrays: a file that fails either
(altered, swapped for another dataset's) is rebuilt with a warning, never used.

Neighbour search is vectorised: the number of images per axis follows from the cutoff and the perpendicular
heights of the cell (``h_k = 1 / |b_k|``, b the reciprocal rows), so strongly skewed cells get enough images;
candidate images farther than ``cutoff + extent of the atoms`` are pruned; small problems are done densely in
numpy, large ones with scipy's cKDTree.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import re
import sys
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from bench.paths import atomic_path, cache_dir
from bench.registry import GRAPH_SPECS, suggest
from bench.structures import Structure, StructureError

log = logging.getLogger(__name__)

# Bump whenever a built graph would change (edges, order, dtypes, file layout): old caches are then ignored.
GRAPH_CODE_VERSION = "3"
# Bump when the cache file's fields or checks change (not the graphs, so not part of a run's identity); a file of
# another format is rebuilt, with a warning.
CACHE_FORMAT = "2"
# Distances within this many Å of the k-th neighbour distance count as tied (float noise, not physics).
TIE_TOL = 1e-6
# Edge order sorts distances quantised to this many Å (then src, image), so float noise cannot reorder ties.
ORDER_QUANTUM = 1e-6
# Two atoms closer than this (Å) are treated as broken input rather than a bond.
MIN_DISTANCE = 1e-3
# Dense numpy neighbour search up to this many candidate (i, j, image) triples, cKDTree above.
DENSE_LIMIT = 200_000
# ALIGNN cutoff growth: x1.5 per step, give up beyond this radius.
MAX_GROWN_CUTOFF = 200.0


class GraphError(ValueError):
    """A structure for which a graph cannot be built; the message names the entry."""


# ---------------------------------------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------------------------------------
_METHODS = ("radius", "nearest", "nearest_ties")


@dataclass(frozen=True)
class GraphSpec:
    """How to build one kind of crystal graph.

    method: ``radius`` (all neighbours with d <= cutoff), ``nearest`` (the ``max_neighbors`` nearest within
    cutoff, fewer if fewer exist), ``nearest_ties`` (every neighbour up to the ``max_neighbors``-th distance,
    cutoff grown until every atom has that many).
    """

    name: str
    method: str
    cutoff: float
    max_neighbors: int | None = None
    undirected: bool = False
    line_graph: bool = False

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(suggest(self.method, list(_METHODS), "graph method"))
        if not self.cutoff > 0:
            raise ValueError(f"graph spec {self.name!r}: cutoff must be > 0, got {self.cutoff}")
        if self.method != "radius" and not (self.max_neighbors and self.max_neighbors > 0):
            raise ValueError(f"graph spec {self.name!r}: method {self.method!r} needs max_neighbors > 0")

    def describe(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def ident(self) -> str:
        """A short stable identity of every field (part of the cache file name)."""
        text = repr(sorted(self.describe().items()))
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def register_graph_spec(spec: GraphSpec) -> GraphSpec:
    GRAPH_SPECS.add(spec.name, spec, description=f"{spec.method} graph, cutoff {spec.cutoff} Å"
                    + (f", {spec.max_neighbors} neighbours" if spec.max_neighbors else "")
                    + (", undirected" if spec.undirected else "")
                    + (", line graph" if spec.line_graph else ""), source=f"{__name__}:{spec.name}")
    return spec


CGCNN = register_graph_spec(GraphSpec("cgcnn", "nearest", 8.0, max_neighbors=12))
ALIGNN = register_graph_spec(GraphSpec("alignn", "nearest_ties", 8.0, max_neighbors=12, undirected=True,
                                       line_graph=True))
MEGNET = register_graph_spec(GraphSpec("megnet", "radius", 4.0))
CARTNET = register_graph_spec(GraphSpec("cartnet", "radius", 5.0))


def get_spec(spec: str | GraphSpec) -> GraphSpec:
    if isinstance(spec, GraphSpec):
        return spec
    return GRAPH_SPECS.get(spec)


# ---------------------------------------------------------------------------------------------------------
# graph data
# ---------------------------------------------------------------------------------------------------------
_LG_FIELDS = ("lg_src", "lg_dst", "cos")


@dataclass(eq=False)
class GraphData:
    """One crystal graph as plain numpy arrays (picklable, and stored without pickle in the cache).

    numbers (N,) int64; src, dst (E,) integer; offsets (E, 3) integer image of src; vec (E, 3) float32
    r = x_dst - (x_src + offsets @ lattice); dist (E,) float32; for line graphs lg_src, lg_dst (E_lg,) integer
    indices of edges, cos (E_lg,) float32. Integer arrays are int64 from ``build_graph`` and int32 when read
    from the cache (memory); ``to_dgl`` and ``collate`` make int64 tensors.
    """

    numbers: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    offsets: np.ndarray
    vec: np.ndarray
    dist: np.ndarray
    lg_src: np.ndarray | None = None
    lg_dst: np.ndarray | None = None
    cos: np.ndarray | None = None
    id: str = ""

    @property
    def num_nodes(self) -> int:
        return len(self.numbers)

    @property
    def num_edges(self) -> int:
        return len(self.src)

    @property
    def num_lg_edges(self) -> int:
        return 0 if self.lg_src is None else len(self.lg_src)

    @property
    def has_line_graph(self) -> bool:
        return self.lg_src is not None


# ---------------------------------------------------------------------------------------------------------
# neighbour search
# ---------------------------------------------------------------------------------------------------------
def _to_cart(f: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """f @ lattice for (M, 3) f, without BLAS: a multithreaded BLAS call on tiny matrices costs more than it
    computes (several times the whole graph build on a busy machine)."""
    return f[:, 0:1] * lattice[0] + f[:, 1:2] * lattice[1] + f[:, 2:3] * lattice[2]


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # np.cross spends most of its time on axis bookkeeping for 3-vectors
    return np.array([u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]])


def _volume(lattice: np.ndarray) -> float:
    a, b, c = lattice
    return float(np.sum(a * _cross(b, c)))


def _reciprocal_rows(lattice: np.ndarray) -> np.ndarray:
    """Rows b_k with a_i . b_k = delta_ik, i.e. inv(lattice).T, by cross products (no LAPACK call)."""
    a, b, c = lattice
    return np.stack([_cross(b, c), _cross(c, a), _cross(a, b)]) / _volume(lattice)


@functools.lru_cache(maxsize=256)
def _grid(n0: int, n1: int, n2: int) -> np.ndarray:
    """All integer triples in [-n0, n0] x [-n1, n1] x [-n2, n2], (M, 3) int64 (read-only, cached)."""
    axes = [np.arange(-m, m + 1) for m in (n0, n1, n2)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    grid.flags.writeable = False
    return grid


def _image_box(lattice: np.ndarray, cutoff: float, span: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer images n (M, 3), and n @ lattice, that can hold a neighbour within ``cutoff`` of a point of the
    (wrapped) cell.

    Fractional differences of wrapped positions lie in [-1, 1], and a vector of length <= cutoff has
    |fractional component k| <= cutoff |b_k| (b_k reciprocal rows: 1/|b_k| is the height of the cell along k),
    hence |n_k| <= floor(cutoff |b_k|) + 1. Images with |n @ L| > cutoff + span (span bounds |x_i - x_j|)
    cannot hold a neighbour and are dropped.
    """
    recip = _reciprocal_rows(lattice)
    nmax = np.floor(cutoff * np.sqrt((recip * recip).sum(1)) + 1e-9).astype(np.int64) + 1
    grid = _grid(int(nmax[0]), int(nmax[1]), int(nmax[2]))
    t = _to_cart(grid, lattice)
    keep = np.einsum("ij,ij->i", t, t) <= (cutoff + span + 1e-6) ** 2
    return grid[keep], t[keep]


def neighbor_pairs(lattice: np.ndarray, frac: np.ndarray, cutoff: float, *, entry: str = "?",
                   dense_limit: int = DENSE_LIMIT) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """All pairs (j -> i, n) with 0 < |x_i - (x_j + n L)| <= cutoff.

    Returns src j (E,), dst i (E,), offsets n (E, 3) int64, vec r (E, 3) float64, dist (E,) float64,
    in no particular order. The offsets refer to the coordinates as given (not wrapped into the cell).
    """
    lattice = np.asarray(lattice, dtype=np.float64)
    frac = np.asarray(frac, dtype=np.float64)
    if not (np.isfinite(lattice).all() and np.isfinite(frac).all()):
        raise GraphError(f"entry {entry}: non-finite lattice or coordinates")
    if abs(_volume(lattice)) < 1e-6:
        raise GraphError(f"entry {entry}: degenerate lattice")
    shift = np.floor(frac)
    fw = frac - shift
    shift = shift.astype(np.int64)
    cart = _to_cart(fw, lattice)
    n = len(frac)
    ext = cart.max(0) - cart.min(0)
    span = float(np.sqrt((ext * ext).sum()))
    images, trans = _image_box(lattice, cutoff, span)  # (M, 3) integer, (M, 3) Cartesian
    m = len(images)
    reach = cutoff + 1e-9
    # candidates first (with a margin), then the exact vectors and the exact test on those only
    if n * n * m <= dense_limit:
        # |D_ij - T_m|^2 = |D|^2 + |T|^2 - 2 D.T as one small matrix product (about 7x faster than
        # materialising every (i, j, m) vector); the rounding error is far below the margin
        diff = (cart[:, None, :] - cart[None, :, :]).reshape(-1, 3)  # row i * n + j
        d2 = (diff * diff).sum(1)[:, None] + (trans * trans).sum(1)[None, :] - 2.0 * (diff @ trans.T)
        flat, mm = np.nonzero(d2 <= reach * reach + 1e-6)
        ii, jj = np.divmod(flat, n)
    else:
        from scipy.spatial import cKDTree

        pts = (cart[:, None, :] + trans[None, :, :]).reshape(-1, 3)  # point p = j * M + m
        pairs = cKDTree(cart).sparse_distance_matrix(cKDTree(pts), reach + 1e-6, output_type="ndarray")
        ii = pairs["i"].astype(np.int64)
        jj, mm = np.divmod(pairs["j"].astype(np.int64), m)
    vec = cart[ii] - (cart[jj] + trans[mm])
    ok = np.einsum("ij,ij->i", vec, vec) <= reach * reach
    ii, jj, mm, vec = ii[ok], jj[ok], mm[ok], vec[ok]
    dist = np.sqrt(np.einsum("ij,ij->i", vec, vec))
    self_pair = (ii == jj) & (mm == int(np.flatnonzero((images == 0).all(axis=1))[0]))
    close = (dist < MIN_DISTANCE) & ~self_pair
    if close.any():
        k = int(np.argmax(close))
        raise GraphError(f"entry {entry}: atoms {int(jj[k])} and {int(ii[k])} overlap "
                         f"(distance {dist[k]:.2g} Å < {MIN_DISTANCE} Å)")
    keep = ~self_pair
    ii, jj, mm, vec, dist = ii[keep], jj[keep], mm[keep], vec[keep], dist[keep]
    # back to the given coordinates: x_j(given) = x_j(wrapped) + s_j L, so n(given) = n + s_i - s_j
    offsets = images[mm]
    if shift.any():
        offsets = offsets + shift[ii] - shift[jj]
    return jj, ii, offsets, vec, dist


def _order(src, dst, offsets, dist) -> np.ndarray:
    """Deterministic edge order: by centre (dst), distance (to 1e-6 Å), src, image. Two packed int64 keys
    (a 6-key lexsort costs more than the whole neighbour search)."""
    q = np.floor(dist / ORDER_QUANTUM + 0.5).astype(np.int64)
    major = dst * (int(q.max(initial=0)) + 1) + q
    lo = offsets.min(initial=0)
    span = int(offsets.max(initial=0) - lo) + 1
    o = offsets - lo
    minor = ((src * span + o[:, 0]) * span + o[:, 1]) * span + o[:, 2]
    n_minor = (int(src.max(initial=0)) + 1) * span ** 3
    if (int(major.max(initial=0)) + 1) * n_minor < 2 ** 62:  # one packed key: a single argsort
        return np.argsort(major * n_minor + minor, kind="stable")
    return np.lexsort((minor, major))


def _group_starts(dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(dst, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return counts, starts


def _line_graph(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """All (e1, e2) with dst[e1] == src[e2] and e1 != e2 (backtracking included), sorted by e1 then e2:
    the edges of ``dgl.line_graph(g, backtracking=True)``."""
    out_order = np.argsort(src, kind="stable")  # edges leaving each atom, grouped by atom
    out_counts, out_starts = _group_starts(src, n)
    per_e1 = out_counts[dst]  # lg out-degree of each bond
    e1 = np.repeat(np.arange(len(src)), per_e1)
    first = np.repeat(out_starts[dst], per_e1)
    local = np.arange(len(e1)) - np.repeat(np.cumsum(per_e1) - per_e1, per_e1)
    e2 = out_order[first + local]
    # DGL's line_graph never joins a bond to itself (possible only for a self-image bond i -> i)
    keep = e1 != e2
    return e1[keep], e2[keep]


def bond_cosines(vec: np.ndarray, lg_src: np.ndarray, lg_dst: np.ndarray) -> np.ndarray:
    """cos of the angle at the shared atom j between bonds e1 = k -> j and e2 = j -> i: (-r_e1).r_e2/(|.||.|).

    Computed in float64 from ``vec`` as given (the stored float32 vectors), row by row, so recomputing it from
    the cache gives bit-identical values."""
    v = vec.astype(np.float64)
    unit = v / np.sqrt(np.einsum("ij,ij->i", v, v))[:, None]
    c = np.einsum("ij,ij->i", unit[lg_src], unit[lg_dst])
    np.negative(c, out=c)
    return np.clip(c, -1.0, 1.0, out=c).astype(np.float32)


def _nearest_candidates(structure: Structure, spec: GraphSpec, entry: str, dense_limit: int):
    """Neighbour pairs within a radius that surely holds each atom's k nearest (and their ties).

    A search within r is enough when every atom's k-th distance is <= r - 2 TIE_TOL (then every neighbour up to
    the k-th distance + TIE_TOL, and every neighbour that sorts before the k-th, lies within r). First try the
    radius of a sphere holding ~1.25^3 (k + 1) atoms at the cell's density (much cheaper than 8 Å, and the
    result is the same), then the spec's cutoff; "nearest_ties" then grows it x1.5 until the test passes,
    "nearest" keeps what lies within the cutoff.
    """
    lattice, frac = structure.lattice, structure.frac
    n, k = len(frac), int(spec.max_neighbors)
    guess = 1.25 * (3.0 * (k + 1) * abs(_volume(lattice)) / (4.0 * math.pi * n)) ** (1.0 / 3.0)
    radii = ([guess] if guess < spec.cutoff else []) + [float(spec.cutoff)]
    while True:
        for r in radii:
            found = neighbor_pairs(lattice, frac, r, entry=entry, dense_limit=dense_limit)
            dst, dist = found[1], found[4]
            if np.bincount(dst[dist <= r - 2 * TIE_TOL], minlength=n).min() >= k:
                return found
        if spec.method == "nearest":
            return found  # fewer than k within the cutoff for some atom: keep what there is (no padding)
        radii = [radii[-1] * 1.5]
        if radii[0] > MAX_GROWN_CUTOFF:
            raise GraphError(f"entry {entry}: fewer than {k} neighbours within {MAX_GROWN_CUTOFF} Å for some atom")


def build_graph(structure: Structure, spec: str | GraphSpec, *, dense_limit: int = DENSE_LIMIT) -> GraphData:
    """The graph of one structure under ``spec`` (a name in GRAPH_SPECS or a GraphSpec)."""
    spec = get_spec(spec)
    entry = getattr(structure, "id", "?")
    lattice, frac = structure.lattice, structure.frac
    n = len(frac)
    if spec.method == "radius":
        src, dst, offsets, vec, dist = neighbor_pairs(lattice, frac, spec.cutoff, entry=entry,
                                                      dense_limit=dense_limit)
    else:
        src, dst, offsets, vec, dist = _nearest_candidates(structure, spec, entry, dense_limit)
    order = _order(src, dst, offsets, dist)
    src, dst, offsets, vec, dist = src[order], dst[order], offsets[order], vec[order], dist[order]
    if spec.method != "radius":
        k = int(spec.max_neighbors)
        counts, starts = _group_starts(dst, n)
        rank = np.arange(len(dst)) - starts[dst]
        if spec.method == "nearest":
            keep = rank < k
        else:
            kth = dist[starts + k - 1]  # every atom has >= k here
            keep = dist <= kth[dst] + TIE_TOL
        src, dst, offsets, vec, dist = src[keep], dst[keep], offsets[keep], vec[keep], dist[keep]
    if spec.undirected:
        # union with the reverses (i -> j, -n); a (src, dst, offset) triple identifies a directed bond
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
        offsets = np.concatenate([offsets, -offsets])
        vec = np.concatenate([vec, -vec])
        dist = np.concatenate([dist, dist])
        # one exact integer sort by (dst, src, image) groups copies; the stable sort keeps the copy found by
        # the search itself (first half) over the negated one. Edges end up ordered by (dst, src, image).
        lo = int(offsets.min(initial=0))
        span = int(offsets.max(initial=0)) - lo + 1
        o = offsets - lo
        key = (((dst * n + src) * span + o[:, 0]) * span + o[:, 1]) * span + o[:, 2]  # < 2^63 for any real cell
        order = np.argsort(key, kind="stable")
        key = key[order]
        first = order[np.concatenate([[True], key[1:] != key[:-1]])]
        src, dst, offsets, vec, dist = src[first], dst[first], offsets[first], vec[first], dist[first]
    vec = vec.astype(np.float32)
    gd = GraphData(
        numbers=np.asarray(structure.numbers, dtype=np.int64),
        src=src.astype(np.int64, copy=False), dst=dst.astype(np.int64, copy=False),
        offsets=offsets.astype(np.int64, copy=False),
        vec=vec, dist=dist.astype(np.float32), id=str(entry),
    )
    if spec.line_graph:
        e1, e2 = _line_graph(src, dst, n)
        gd.lg_src, gd.lg_dst = e1.astype(np.int64, copy=False), e2.astype(np.int64, copy=False)
        gd.cos = bond_cosines(vec, e1, e2)
    return gd


# ---------------------------------------------------------------------------------------------------------
# DGL
# ---------------------------------------------------------------------------------------------------------
def to_dgl(gd: GraphData):
    """(g, lg | None): g.ndata["Z"] int64, g.edata["r"] (E,3) and ["d"] (E,) float32; lg.edata["cos"]."""
    import dgl
    import torch

    # features are copies (torch.tensor), so in-place edits of a graph never reach the GraphData or the cache
    g = dgl.graph((torch.from_numpy(gd.src.astype(np.int64, copy=False)),
                   torch.from_numpy(gd.dst.astype(np.int64, copy=False))), num_nodes=gd.num_nodes)
    g.ndata["Z"] = torch.tensor(gd.numbers, dtype=torch.int64)
    g.edata["r"] = torch.tensor(gd.vec, dtype=torch.float32)
    g.edata["d"] = torch.tensor(gd.dist, dtype=torch.float32)
    lg = None
    if gd.lg_src is not None:
        lg = dgl.graph((torch.from_numpy(gd.lg_src.astype(np.int64, copy=False)),
                        torch.from_numpy(gd.lg_dst.astype(np.int64, copy=False))), num_nodes=gd.num_edges)
        lg.edata["cos"] = torch.tensor(gd.cos, dtype=torch.float32)
    return g, lg


@dataclass
class QuotientBatch:
    """The symmetry-reduced form of a batch (``bench.quotient``): ``g`` has one node per atom class (ndata
    ``Z``, ``n`` = class size) and one edge per bond class (edata ``d``, ``n`` = class size, ``w`` = multiplicity:
    bonds of the class entering one atom of the destination class); ``lg`` likewise over bond classes, with one
    edge per triplet class (ndata ``n``; edata ``cos``, ``n``, ``w``); ``atom_class`` (N,) maps every atom of
    the batch to its node in ``g``. Classes never span two crystals: ``g.batch_num_nodes()`` counts per crystal.
    ``g`` and ``lg`` are ``bench.graphops.Graph`` index views (``.dgl()`` gives the DGL graph)."""

    g: Any
    lg: Any
    atom_class: Any

    def to(self, device) -> "QuotientBatch":
        return QuotientBatch(self.g.to(device), None if self.lg is None else self.lg.to(device),
                             self.atom_class.to(device))


@dataclass
class Batch:
    """A batch of crystal graphs: ``graph`` (the batched atom graph as index tensors, ``bench.graphops.Graph``:
    ``src``, ``dst``, per-crystal counts, ndata ``Z``, edata ``r``, ``d``), ``line`` (its line graph, edata
    ``cos``, or None), ``y`` (B,), and ``q``, the symmetry-reduced form, when collated with ``quotient=True``.

    ``g`` / ``lg`` are the same graphs as batched DGL graphs (built on first use, on the host, where DGL is
    installed), so ``dgl.readout_nodes(batch.g, ...)`` etc. work; the index views need no DGL and travel to any
    device with ``.to``. Constructing ``Batch(g, lg, ...)`` from DGL graphs converts them."""

    graph: Any
    line: Any
    y: Any
    num_graphs: int
    q: QuotientBatch | None = None

    def __post_init__(self) -> None:
        from bench.graphops import Graph

        for name in ("graph", "line"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Graph):  # a DGL graph (the documented constructor)
                setattr(self, name, Graph.from_dgl(v))

    @property
    def g(self):
        return _host_dgl(self.graph)

    @property
    def lg(self):
        return None if self.line is None else _host_dgl(self.line)

    def to(self, device) -> "Batch":
        return Batch(
            self.graph.to(device),
            None if self.line is None else self.line.to(device),
            None if self.y is None else self.y.to(device),
            self.num_graphs,
            None if self.q is None else self.q.to(device),
        )


def _host_dgl(graph):
    """The DGL form of an index-view graph, on the host (the PyPI DGL build has no CUDA), cached on the graph."""
    host = graph._cache.get("host")
    if host is None:
        from bench.graphops import dgl_available

        if not dgl_available():
            raise ImportError("batch.g / batch.lg are DGL graphs, and dgl cannot be imported here; use batch.graph "
                              "/ batch.line (bench.graphops.Graph: the same graphs as index tensors)")
        host = graph.dgl() if graph.device.type == "cpu" else graph.to("cpu").dgl()
        graph._cache["host"] = host
    return host


def _starts(counts, repeats) -> np.ndarray:
    """Each part's start in a concatenation of parts of sizes ``counts``, repeated ``repeats[i]`` times."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.repeat(np.concatenate([[0], np.cumsum(counts)[:-1]]), repeats)


def _index_graph(src: np.ndarray, dst: np.ndarray, node_counts, edge_counts):
    """A batched index-view graph from global int64 edge arrays and the per-graph node and edge counts."""
    import torch

    from bench.graphops import Graph

    node_counts = np.asarray(node_counts, dtype=np.int64)
    return Graph(torch.from_numpy(np.ascontiguousarray(src, dtype=np.int64)),
                 torch.from_numpy(np.ascontiguousarray(dst, dtype=np.int64)), int(node_counts.sum()),
                 torch.from_numpy(node_counts), torch.from_numpy(np.asarray(edge_counts, dtype=np.int64)))


def _batched_graph(src_parts, dst_parts, node_counts, edge_counts):
    node_base = _starts(node_counts, edge_counts)
    src = np.concatenate(src_parts).astype(np.int64) + node_base
    dst = np.concatenate(dst_parts).astype(np.int64) + node_base
    return _index_graph(src, dst, node_counts, edge_counts)


def collate(items: Sequence[tuple[GraphData, float | None]], quotient: bool = False) -> Batch:
    """Batch (GraphData, target) pairs into one graph (and line graph) of index tensors, built from concatenated
    arrays; with ``quotient``, also the symmetry-reduced graphs (``Batch.q``). No DGL is needed; ``batch.g`` is
    the same as ``dgl.batch([to_dgl(gd)[0] ...])``.
    """
    import torch

    if len(items) == 0:
        raise ValueError("collate: empty batch")
    gds = [it[0] for it in items]
    ys = [it[1] for it in items]
    n_nodes = [gd.num_nodes for gd in gds]
    n_edges = [gd.num_edges for gd in gds]
    g = _batched_graph([gd.src for gd in gds], [gd.dst for gd in gds], n_nodes, n_edges)
    g.ndata["Z"] = torch.from_numpy(np.concatenate([gd.numbers for gd in gds]).astype(np.int64))
    g.edata["r"] = torch.from_numpy(np.concatenate([gd.vec for gd in gds]).astype(np.float32, copy=False))
    g.edata["d"] = torch.from_numpy(np.concatenate([gd.dist for gd in gds]).astype(np.float32, copy=False))
    with_lg = [gd.lg_src is not None for gd in gds]
    lg = None
    if any(with_lg):
        if not all(with_lg):
            raise ValueError("collate: some graphs have a line graph and some do not")
        lg = _batched_graph([gd.lg_src for gd in gds], [gd.lg_dst for gd in gds], n_edges,
                            [gd.num_lg_edges for gd in gds])
        lg.edata["cos"] = torch.from_numpy(np.concatenate([gd.cos for gd in gds]).astype(np.float32, copy=False))
    if all(y is None for y in ys):
        y = None
    elif any(y is None for y in ys):
        raise ValueError("collate: some targets are None and some are not")
    else:
        y = torch.tensor(np.asarray(ys, dtype=np.float64), dtype=torch.float32)
    return Batch(g, lg, y, len(items), _quotient_batch(gds) if quotient else None)


def collate_quotient(items: Sequence[tuple[GraphData, float | None]]) -> Batch:
    """``collate(items, quotient=True)``: a picklable collate_fn for DataLoaders."""
    return collate(items, quotient=True)


def _quotient_batch(gds: Sequence[GraphData]) -> QuotientBatch:
    """Vectorised over the batch: per-graph class arrays are concatenated with offsets once, then indexed."""
    import torch

    from bench.quotient import quotient_of

    qs = [quotient_of(gd) for gd in gds]

    def cat(parts, dtype=np.int64):
        return np.concatenate(parts).astype(dtype, copy=False)

    def f32(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float32))

    n_atoms, n_edges = [gd.num_nodes for gd in gds], [gd.num_edges for gd in gds]
    n_acls, n_ecls = [q.num_atom_classes for q in qs], [q.num_edge_classes for q in qs]
    atom_class = cat([q.atom_class for q in qs]) + _starts(n_acls, n_atoms)
    atom_rep = cat([q.atom_rep for q in qs]) + _starts(n_atoms, n_acls)
    edge_rep = cat([q.edge_rep for q in qs]) + _starts(n_edges, n_ecls)
    atom_base = _starts(n_atoms, n_edges)
    # a bond class's endpoints are the classes of its representative's endpoints (the same for every member)
    q_src = atom_class[(cat([gd.src for gd in gds]) + atom_base)[edge_rep]]
    q_dst = atom_class[(cat([gd.dst for gd in gds]) + atom_base)[edge_rep]]
    atom_size, edge_size = cat([q.atom_size for q in qs]), cat([q.edge_size for q in qs])
    g = _index_graph(q_src, q_dst, n_acls, n_ecls)
    g.ndata["Z"] = torch.from_numpy(cat([gd.numbers for gd in gds])[atom_rep])
    g.ndata["n"] = f32(atom_size)
    g.edata["d"] = f32(cat([gd.dist for gd in gds], np.float32)[edge_rep])
    g.edata["n"] = f32(edge_size)
    g.edata["w"] = f32(edge_size / atom_size[q_dst])
    lg = None
    if gds[0].lg_src is not None:
        n_tcls = [q.num_trip_classes for q in qs]
        edge_class = cat([q.edge_class for q in qs]) + _starts(n_ecls, n_edges)
        trip_rep = cat([q.trip_rep for q in qs]) + _starts([gd.num_lg_edges for gd in gds], n_tcls)
        edge_base = _starts(n_edges, [gd.num_lg_edges for gd in gds])
        l_src = edge_class[(cat([gd.lg_src for gd in gds]) + edge_base)[trip_rep]]
        l_dst = edge_class[(cat([gd.lg_dst for gd in gds]) + edge_base)[trip_rep]]
        trip_size = cat([q.trip_size for q in qs])
        lg = _index_graph(l_src, l_dst, n_ecls, n_tcls)
        lg.ndata["n"] = g.edata["n"]  # the line graph's nodes are the bond classes
        lg.edata["cos"] = f32(cat([gd.cos for gd in gds], np.float32)[trip_rep])
        lg.edata["n"] = f32(trip_size)
        lg.edata["w"] = f32(trip_size / edge_size[l_dst])
    return QuotientBatch(g, lg, torch.from_numpy(atom_class))


# ---------------------------------------------------------------------------------------------------------
# cache + parallel build
# ---------------------------------------------------------------------------------------------------------
class GraphList(list):
    """A list of GraphData plus what was skipped: ``kept`` (indices into the input) and ``skipped``
    (list of (index, id, reason))."""

    kept: np.ndarray
    skipped: list

    def __init__(self, items=(), kept=None, skipped=()):
        super().__init__(items)
        self.kept = np.arange(len(self)) if kept is None else np.asarray(kept, dtype=np.int64)
        self.skipped = list(skipped)


def _structures_hash(structures: Sequence[Structure], digest_size: int, ids: bool) -> str:
    h = hashlib.blake2b(digest_size=digest_size)
    h.update(str(len(structures)).encode())
    for s in structures:
        h.update(np.ascontiguousarray(s.lattice, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(s.frac, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(s.numbers, dtype=np.int64).tobytes())
        if ids:
            sid = str(getattr(s, "id", "")).encode()
            h.update(len(sid).to_bytes(8, "little") + sid)
    return h.hexdigest()


def structures_fingerprint(structures: Sequence[Structure]) -> str:
    """A hash of every lattice, coordinate and element (so a changed or truncated dataset misses the cache)."""
    return _structures_hash(structures, 10, ids=False)


def cache_source(structures: Sequence[Structure], spec: str | GraphSpec) -> str:
    """What a cache file's graphs were built from: a full hash of every lattice, coordinate, element and id, the
    spec and ``GRAPH_CODE_VERSION``. Stored inside the file and compared on read, so a file that is not the one
    its name promises (swapped, copied from another dataset) is rebuilt, not used."""
    spec = get_spec(spec)
    return f"{_structures_hash(structures, 32, ids=True)}:{spec.name}-{spec.ident}:v{GRAPH_CODE_VERSION}"


def cache_path(structures: Sequence[Structure], spec: str | GraphSpec, key: str) -> Path:
    spec = get_spec(spec)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(key)).strip("_")[:80] or "data"
    name = f"{safe}-{spec.name}-{spec.ident}-n{len(structures)}-{structures_fingerprint(structures)}" \
           f"-v{GRAPH_CODE_VERSION}.npz"
    return cache_dir() / "graphs" / name


_ARRAY_FIELDS = ("numbers", "src", "dst", "offsets", "vec", "dist", "lg_src", "lg_dst", "cos")
_STORE_DTYPES = {"numbers": np.int16, "src": np.int32, "dst": np.int32, "offsets": np.int32, "vec": np.float32,
                 "dist": np.float32, "lg_src": np.int32, "lg_dst": np.int32, "cos": np.float32}
_COUNT_OF = {"numbers": "n_nodes", "src": "n_edges", "dst": "n_edges", "offsets": "n_edges", "vec": "n_edges",
             "dist": "n_edges", "lg_src": "n_lg", "lg_dst": "n_lg", "cos": "n_lg"}


class GraphCacheMismatch(ValueError):
    """A graph cache file that does not hold what it should: altered, damaged, of another format, or built from
    other structures."""


def arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    """blake2b of every array's name, dtype, shape and bytes, the stored checksum itself excepted."""
    h = hashlib.blake2b(digest_size=32)
    for name in sorted(arrays):
        if name == "checksum":
            continue
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _check_cache(data: dict[str, np.ndarray], source: str | None) -> None:
    """Raise GraphCacheMismatch unless ``data`` (a cache file's arrays) is intact, of this format and, when
    ``source`` is given, built from it (``cache_source``)."""
    if "format" not in data:
        raise GraphCacheMismatch("written by an older crysbench, without a content check")
    if str(data["format"]) != CACHE_FORMAT:
        raise GraphCacheMismatch(f"cache format {str(data['format'])!r}, this version reads {CACHE_FORMAT!r}")
    if str(data.get("checksum", "")) != arrays_checksum(data):
        raise GraphCacheMismatch("its arrays do not match their stored checksum (altered or damaged)")
    if source is not None and str(data["source"]) != source:
        raise GraphCacheMismatch("built from other structures or another graph spec (a swapped or copied file)")


def save_graphs(path: str | os.PathLike, graphs: Sequence[GraphData], kept: np.ndarray,
                skipped: Sequence[tuple[int, str, str]] = (), *, source: str = "") -> None:
    """Write graphs as one npz of concatenated arrays + per-graph counts (no pickle), atomically, with the cache
    format, ``source`` (``cache_source`` of the structures) and a checksum of the arrays, checked on read.

    The line graph is not stored: it is ~10x the atom graph on disk, and ``read_graphs`` rebuilds it (and the
    bit-identical cosines) from the edges in a few vectorised passes."""
    with_lg = bool(graphs) and graphs[0].lg_src is not None
    arrays: dict[str, np.ndarray] = {
        "n_nodes": np.array([g.num_nodes for g in graphs], dtype=np.int64),
        "n_edges": np.array([g.num_edges for g in graphs], dtype=np.int64),
        "n_lg": np.array([g.num_lg_edges for g in graphs], dtype=np.int64),
        "with_lg": np.array(with_lg),
        "ids": np.array([g.id for g in graphs], dtype=str) if graphs else np.zeros(0, dtype="<U1"),
        "kept": np.asarray(kept, dtype=np.int64),
        "skipped_index": np.array([s[0] for s in skipped], dtype=np.int64),
        "skipped_id": np.array([s[1] for s in skipped], dtype=str) if skipped else np.zeros(0, dtype="<U1"),
        "skipped_reason": np.array([s[2] for s in skipped], dtype=str) if skipped else np.zeros(0, dtype="<U1"),
    }
    for f in _ARRAY_FIELDS:
        if f in _LG_FIELDS:
            continue
        parts = [getattr(g, f) for g in graphs]
        shape_tail = (3,) if f in ("offsets", "vec") else ()
        arrays[f] = (np.concatenate(parts).astype(_STORE_DTYPES[f]) if parts
                     else np.zeros((0,) + shape_tail, dtype=_STORE_DTYPES[f]))
    arrays["format"] = np.array(CACHE_FORMAT)
    arrays["source"] = np.array(source)
    arrays["checksum"] = np.array(arrays_checksum(arrays))
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _line_graphs_of(data: dict, chunk_edges: int = 2_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated per-graph line graphs (local edge indices, int32) and cosines of stored graphs, in chunks
    of whole graphs (the full ALIGNN set has ~10^8 bond pairs)."""
    n_nodes, n_edges = data["n_nodes"], data["n_edges"]
    node_base = np.concatenate([[0], np.cumsum(n_nodes)])
    edge_base = np.concatenate([[0], np.cumsum(n_edges)])
    out_s, out_d, out_c, counts = [], [], [], []
    b0 = 0
    while b0 < len(n_edges):
        b1 = int(np.searchsorted(edge_base, edge_base[b0] + chunk_edges, side="right")) - 1
        b1 = min(max(b1, b0 + 1), len(n_edges))
        e0, e1_ = int(edge_base[b0]), int(edge_base[b1])
        graph_of_edge = np.repeat(np.arange(b0, b1), n_edges[b0:b1])
        shift = node_base[graph_of_edge] - node_base[b0]
        src = data["src"][e0:e1_].astype(np.int64) + shift
        dst = data["dst"][e0:e1_].astype(np.int64) + shift
        a, b = _line_graph(src, dst, int(node_base[b1] - node_base[b0]))
        out_c.append(bond_cosines(data["vec"][e0:e1_], a, b))
        g = graph_of_edge[a]
        local = edge_base[g] - e0
        out_s.append((a - local).astype(np.int32))
        out_d.append((b - local).astype(np.int32))
        counts.append(np.bincount(g - b0, minlength=b1 - b0))
        b0 = b1
    if counts and not np.array_equal(np.concatenate(counts), data["n_lg"]):
        raise ValueError("line-graph sizes disagree with the stored counts")
    if not out_s:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(out_s), np.concatenate(out_d), np.concatenate(out_c)


def read_graphs(path: str | os.PathLike, *, source: str | None = None) -> GraphList:
    """Read a file written by ``save_graphs`` (``allow_pickle=False``); GraphCacheMismatch unless it is intact and
    (``source`` given) built from ``source``."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    _check_cache(data, source)
    with_lg = bool(data["with_lg"])
    ids = data["ids"]
    split: dict[str, list[np.ndarray]] = {}
    if with_lg:
        data["lg_src"], data["lg_dst"], data["cos"] = _line_graphs_of(data)
    for f in _ARRAY_FIELDS:
        if f in _LG_FIELDS and not with_lg:
            continue
        counts = data[_COUNT_OF[f]]
        arr = data[f]
        if f == "numbers":
            arr = arr.astype(np.int64)
        # indices and images stay int32 (the ALIGNN line graph of all of dft_3d is ~10^8 pairs); to_dgl and
        # collate widen them
        split[f] = np.split(arr, np.cumsum(counts)[:-1]) if len(counts) else []
    graphs = []
    for b in range(len(ids)):
        kw = {f: split[f][b] for f in split}
        graphs.append(GraphData(id=str(ids[b]), **kw))
    skipped = [(int(i), str(s), str(r)) for i, s, r in
               zip(data["skipped_index"], data["skipped_id"], data["skipped_reason"])]
    return GraphList(graphs, kept=data["kept"], skipped=skipped)


def _build_one(args):
    idx, structure, spec = args
    try:
        return idx, build_graph(structure, spec), None
    except (GraphError, StructureError, ValueError, np.linalg.LinAlgError) as e:
        return idx, None, f"{type(e).__name__}: {e}"


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _pool_worker_init() -> None:
    """Graph-builder workers end on SIGTERM, the way a pool stops them, and leave SIGINT to the parent, whatever
    handlers the parent had installed (a sweep's, Ray's, a test's): an inherited Python handler that returns
    instead of exiting leaves the worker alive, and ``Pool.terminate`` waiting for it forever."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_graphs(structures: Sequence[Structure], spec: str | GraphSpec, *, workers: int | None = None,
                 progress: bool = True, on_error: str = "raise") -> GraphList:
    """Build every graph (in parallel when ``workers`` > 1), no cache."""
    if on_error not in ("raise", "skip"):
        raise ValueError(suggest(str(on_error), ["raise", "skip"], "on_error value"))
    spec = get_spec(spec)
    workers = _default_workers() if workers is None else int(workers)
    n = len(structures)
    jobs = ((i, s, spec) for i, s in enumerate(structures))
    results: list[GraphData | None] = [None] * n
    errors: list[tuple[int, str, str]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"graphs[{spec.name}]", unit="struct", file=sys.stderr, mininterval=1.0)

    def consume(it):
        for idx, gd, err in it:
            if err is not None:
                sid = getattr(structures[idx], "id", "?")
                if on_error == "raise":
                    raise GraphError(f"graph {spec.name!r} failed for structure {idx} ({sid}): {err}")
                errors.append((idx, str(sid), err))
            else:
                results[idx] = gd
            if bar is not None:
                bar.update(1)

    try:
        if workers <= 1 or n < 2 * workers:
            consume(map(_build_one, jobs))
        else:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            chunk = max(1, min(64, n // (workers * 8)))
            with ctx.Pool(workers, initializer=_pool_worker_init) as pool:
                consume(pool.imap(_build_one, jobs, chunksize=chunk))
    finally:
        if bar is not None:
            bar.close()
    kept = [i for i in range(n) if results[i] is not None]
    if errors:
        log.warning("graphs[%s]: skipped %d of %d structures: %s", spec.name, len(errors), n,
                    ", ".join(f"{sid} ({why})" for _, sid, why in errors[:5]) + (" ..." if len(errors) > 5 else ""))
    return GraphList([results[i] for i in kept], kept=kept, skipped=errors)


def load_graphs(structures: Sequence[Structure], spec: str | GraphSpec, key: str, workers: int | None = None,
                progress: bool = True, *, on_error: str = "raise", cache: bool = True) -> GraphList:
    """Graphs of ``structures`` under ``spec``, from the on-disk cache when present, else built and cached.

    ``key`` names the dataset (e.g. ``TaskData.dataset_key``); the file name also holds the spec, a fingerprint
    of the structures and ``GRAPH_CODE_VERSION``, and a file whose content does not match (``cache_source``, a
    checksum) is rebuilt with a warning. With ``on_error="skip"`` structures that fail are left out;
    the result's ``.kept`` gives the indices of the structures kept and ``.skipped`` (index, id, reason).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(suggest(str(on_error), ["raise", "skip"], "on_error value"))
    spec = get_spec(spec)
    path = cache_path(structures, spec, key) if cache else None
    source = cache_source(structures, spec) if cache else ""
    if path is not None and path.exists():
        try:
            out = read_graphs(path, source=source)
        except GraphCacheMismatch as e:
            log.warning("graph cache %s does not hold the graphs of these %d structures (%s); rebuilding it",
                        path, len(structures), e)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            log.warning("ignoring unreadable graph cache %s (%s); rebuilding", path, e)
        else:
            if out.skipped and on_error == "raise":
                idx, sid, why = out.skipped[0]
                raise GraphError(f"graph {spec.name!r} failed for structure {idx} ({sid}): {why} "
                                 f"({len(out.skipped)} failures in total; pass on_error='skip' to leave them out)")
            if out.skipped:
                log.warning("graphs[%s]: %d structures skipped (cached): %s", spec.name, len(out.skipped),
                            ", ".join(s[1] for s in out.skipped[:5]))
            return out
    out = build_graphs(structures, spec, workers=workers, progress=progress, on_error=on_error)
    if path is not None:
        save_graphs(path, out, out.kept, out.skipped, source=source)
    return out


def edge_summary(graphs: Iterable[GraphData]) -> dict:
    graphs = list(graphs)
    return {
        "structures": len(graphs),
        "atoms": int(sum(g.num_nodes for g in graphs)),
        "edges": int(sum(g.num_edges for g in graphs)),
        "line_graph_edges": int(sum(g.num_lg_edges for g in graphs)),
    }

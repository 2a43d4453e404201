"""Graph corruptions shared by the objectives: atom masking and edge dropping.

UNATE (Sole et al., arXiv 2605.25866) masks 10% of a batch's atoms to a mask token and drops 10% of the edges;
CrysAtom (Mukherjee et al., LoG 2024) zeroes the input of 10% of each crystal's atoms (at least one) and drops
10% of each atom's neighbour edges. Both are expressed here on a collated ``bench.graphs.Batch``; the clean batch
is never modified (corrupted views get new graph objects).

Line graphs (ALIGNN): a line-graph node is an edge of ``g`` (in ``g``'s edge order), and a line-graph edge
joins two edges sharing an atom. Dropping edges of ``g`` therefore drops exactly the matching line-graph nodes
(and the line-graph edges touching them); the remaining line graph is the line graph of the remaining ``g``,
in the same edge order. ``drop_edges`` does that, so line-graph encoders work unchanged.

Everything here works on the batch's index-view graphs (``batch.graph``, ``batch.line``: ``bench.graphops.Graph``),
so it needs no DGL and runs on any device.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


def _replace(batch, **changes):
    if dataclasses.is_dataclass(batch):
        return dataclasses.replace(batch, **changes)
    new = type(batch).__new__(type(batch))
    new.__dict__.update(batch.__dict__)
    new.__dict__.update(changes)
    return new


def _check_rate(rate: float, what: str) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {rate!r}")


def mask_atoms(
    batch, rate: float, rng: np.random.Generator, *, per_graph: bool = False, at_least_one: bool = True
) -> torch.Tensor:
    """Choose atoms to corrupt; returns a BoolTensor (N,) on the batch's device.

    ``per_graph=False`` (UNATE): round(rate * N) atoms drawn without replacement from the whole batch.
    ``per_graph=True`` (CrysAtom): round(rate * n_g) atoms from each crystal. ``at_least_one`` raises each
    count to at least one (per crystal when ``per_graph``).
    """
    _check_rate(rate, "mask rate")
    g = batch.graph
    n_total = g.num_nodes()
    mask = np.zeros(n_total, dtype=bool)
    if per_graph:
        counts = g.batch_num_nodes().cpu().numpy()
        start = 0
        for n in counts:
            k = int(round(rate * n))
            if at_least_one:
                k = max(k, 1)
            k = min(k, int(n))
            if k:
                mask[start + rng.choice(int(n), size=k, replace=False)] = True
            start += int(n)
    else:
        k = int(round(rate * n_total))
        if at_least_one:
            k = max(k, 1)
        k = min(k, n_total)
        if k:
            mask[rng.choice(n_total, size=k, replace=False)] = True
    return torch.from_numpy(mask).to(g.device)


def with_atomic_numbers(batch, atom_mask: torch.Tensor, token: int = 0):
    """A view of ``batch`` whose masked atoms carry atomic number ``token`` (0: the mask row of a table)."""
    g = batch.graph.local_var()  # shares structure; feature writes stay local to this view
    z = g.ndata["Z"].clone()
    z[atom_mask] = token
    g.ndata["Z"] = z
    return _replace(batch, graph=g)


def with_permuted_atoms(batch, rng: np.random.Generator):
    """A view of ``batch`` whose atomic numbers are a random permutation of the batch's (the graph and geometry
    unchanged): the corruption of Deep Graph Infomax (Velickovic et al., ICLR 2019), row-shuffled node inputs."""
    g = batch.graph.local_var()
    z = g.ndata["Z"]
    perm = torch.from_numpy(rng.permutation(z.shape[0])).to(z.device)
    g.ndata["Z"] = z[perm]
    return _replace(batch, graph=g)


def choose_edges(batch, rate: float, rng: np.random.Generator, *, per_node: bool = False) -> np.ndarray:
    """Edge ids to drop. ``per_node=False``: round(rate * E) edges of the batch uniformly;
    ``per_node=True``: round(rate * deg) of each atom's incoming (neighbour) edges."""
    _check_rate(rate, "edge drop rate")
    g = batch.graph
    e = g.num_edges()
    if e == 0 or rate == 0.0:
        return np.zeros(0, dtype=np.int64)
    if not per_node:
        k = int(round(rate * e))
        return np.sort(rng.choice(e, size=k, replace=False)).astype(np.int64)
    dst = g.edges()[1].cpu().numpy()
    key = rng.random(e)
    order = np.lexsort((key, dst))  # edges grouped by destination atom, random order inside each group
    d_sorted = dst[order]
    group_start = np.searchsorted(d_sorted, d_sorted, side="left")
    rank = np.arange(e) - group_start
    deg = np.bincount(dst, minlength=g.num_nodes())
    quota = np.rint(rate * deg[d_sorted]).astype(np.int64)
    return np.sort(order[rank < quota]).astype(np.int64)


def drop_edges(batch, rate: float, rng: np.random.Generator, *, per_node: bool = False):
    """A view of ``batch`` without the chosen edges (see ``choose_edges``); the line graph, if any, loses the
    matching nodes so it stays the line graph of the remaining edges. Batch membership is preserved."""
    eids = choose_edges(batch, rate, rng, per_node=per_node)
    if len(eids) == 0:
        return batch
    ids = torch.from_numpy(eids).to(batch.graph.device)
    changes = {"graph": batch.graph.remove_edges(ids)}
    lg = getattr(batch, "line", None)
    if lg is not None:
        if lg.num_nodes() != batch.graph.num_edges():
            raise ValueError(
                f"drop_edges: the line graph has {lg.num_nodes()} nodes but the graph has "
                f"{batch.graph.num_edges()} edges; cannot drop edges consistently"
            )
        changes["line"] = lg.remove_nodes(ids)
    return _replace(batch, **changes)


def concat_batches(*batches):
    """One batch holding the crystals of several (e.g. two corrupted views encoded in one pass, so BatchNorm
    sees both, as the UNATE reference does); crystals keep their order, first batch first."""
    from bench.graphops import Graph

    first = batches[0]
    g = Graph.batch([b.graph for b in batches])
    lgs = [getattr(b, "line", None) for b in batches]
    if any(x is not None for x in lgs) and not all(x is not None for x in lgs):
        raise ValueError("concat_batches: some batches have a line graph and some do not")
    lg = Graph.batch(lgs) if lgs[0] is not None else None
    ys = [getattr(b, "y", None) for b in batches]
    y = None if any(v is None for v in ys) else torch.cat(ys)
    return _replace(first, graph=g, line=lg, y=y, num_graphs=sum(b.num_graphs for b in batches))

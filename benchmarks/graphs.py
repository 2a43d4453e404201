"""Graph construction speed: bench.graphs (all four specs) side by side with alignn 2026.8.11's DGL builder.

On N random real JARVIS dft_3d 2021 structures (seed 0) this times, one process, one structure at a time:

* ``bench.graphs.build_graph`` for cgcnn, alignn, megnet, cartnet (numpy arrays), and build_graph + ``to_dgl``
  for alignn (a DGL graph and line graph with bond cosines, what alignn's builder returns);
* ``alignn.graphs.Graph.atom_dgl_multigraph`` (neighbor_strategy="k-nearest", cutoff 8, max_neighbors 12,
  use_canonize=True, compute_line_graph=True, atom_features="atomic_number": its cheapest featurisation) on
  jarvis-tools ``Atoms`` of the same structures (Choudhary & DeCost, npj Comput Mater 7, 185, 2021);
* ``alignn.torch_graph_builder.build_pure_torch_graph`` (two-body cutoff 8, max_neighbors 12, line graph), the
  DGL-free builder alignn 2026 pairs with its pure-torch model (timed only: its neighbour rule differs).

It then checks that both ALIGNN graphs hold the same edges, per structure, as multisets of
(src, dst, distance rounded to 1e-3 Å), and the same bond-angle cosines (multiset rounded to 1e-3). alignn stores
every self-image bond (i -> i) twice (see bench/graphs.py); a second count compares after halving those.

    make benchmark-env        # alignn 2026.8.11 without its pins
    python benchmarks/graphs.py --n 2000 --data-dir ../shared/data/jarvis [--json out.json]
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread: the machine is shared, and multithreaded BLAS on tiny matrices only adds spinning.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def _load(data_dir: str, n: int, seed: int):
    from jarvis.db.figshare import data

    rows = data("dft_3d_2021", store_dir=data_dir)
    idx = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    return [rows[i] for i in sorted(idx)]


def _time_each(fn, items) -> tuple[list, list[float], float]:
    """Results, per-item CPU times (process_time: robust to other jobs on a shared machine), wall total."""
    fn(items[0])  # warm-up (first DGL call, imports)
    out, times = [], []
    w = time.perf_counter()
    for it in items:
        t = time.process_time()
        out.append(fn(it))
        times.append(time.process_time() - t)
    return out, times, time.perf_counter() - w


def _stats(times: list[float], wall: float) -> dict:
    total = sum(times)
    return {"cpu_s": round(total, 3), "structures_per_s": round(len(times) / total, 1),
            "median_ms": round(1e3 * statistics.median(times), 3), "wall_s": round(wall, 3)}


def _kth_distances(s, k=12) -> np.ndarray:
    """Each atom's k-th neighbour distance (the tie shell of the ALIGNN graph), from bench's radius search."""
    from bench.graphs import neighbor_pairs

    cutoff = 8.0
    while True:
        _, dst, _, _, dist = neighbor_pairs(s.lattice, s.frac, cutoff)
        counts = np.bincount(dst, minlength=s.num_atoms)
        if counts.min() >= k:
            return np.array([np.sort(dist[dst == i])[k - 1] for i in range(s.num_atoms)])
        cutoff *= 1.5


def _outside_shells(c: Counter, shells: np.ndarray, tol=2e-3) -> Counter:
    return Counter({key: v for key, v in c.items() if np.min(np.abs(shells - key[2])) > tol})


def _canon(src, dst, d):
    """Edges sorted by (src, dst, distance): two graphs hold the same multiset of (src, dst, distance) iff the
    sorted src and dst arrays are equal and the distances agree (to float32 precision)."""
    src, dst, d = np.asarray(src, np.int64), np.asarray(dst, np.int64), np.asarray(d, np.float64)
    o = np.lexsort((d, dst, src))
    return src[o], dst[o], d[o]


def _same_edges(a, b, atol=1e-4) -> bool:
    return len(a[0]) == len(b[0]) and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) \
        and np.allclose(a[2], b[2], atol=atol)


def _halve_self_images(u, v, r):
    """alignn's edges with each duplicated self-image bond (u == v, same vector) kept once."""
    keep = u != v
    self_idx = np.flatnonzero(~keep)
    if len(self_idx):
        key = np.column_stack([u[self_idx], np.round(r[self_idx], 4)])
        _, first = np.unique(key, axis=0, return_index=True)
        keep[self_idx[first]] = True
    return keep


def _same_vectors(gd, u, v, r) -> bool:
    """Same multiset of (src, dst, edge vector rounded to 1e-3 Å)."""
    k1 = sorted(zip(gd.src.tolist(), gd.dst.tolist(), map(tuple, np.round(gd.vec.astype(np.float64), 3).tolist())))
    k2 = sorted(zip(u.tolist(), v.tolist(), map(tuple, np.round(r, 3).tolist())))
    return k1 == k2


def _outside(c, shells, tol=2e-3):
    """Edges whose distance is not within tol of any atom's 12th-neighbour distance."""
    m = np.min(np.abs(c[2][:, None] - shells[None, :]), axis=1) > tol
    return c[0][m], c[1][m], c[2][m]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "jarvis"))
    ap.add_argument("--no-alignn", action="store_true", help="time bench.graphs only")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from bench import graphs as G
    from bench.structures import Structure

    t0 = time.perf_counter()
    rows = _load(args.data_dir, args.n, args.seed)
    structures = [Structure.from_jarvis(r["atoms"], r["jid"]) for r in rows]
    print(f"{len(rows)} structures ({sum(s.num_atoms for s in structures)} atoms) loaded in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    result = {"n": len(rows), "seed": args.seed, "atoms": int(sum(s.num_atoms for s in structures)), "ours": {}}

    ours = {}
    for name in ("cgcnn", "alignn", "megnet", "cartnet"):
        graphs, times, wall = _time_each(lambda s, name=name: G.build_graph(s, name), structures)
        ours[name] = graphs
        result["ours"][name] = {**_stats(times, wall), **G.edge_summary(graphs)}
    _, times, wall = _time_each(lambda s: G.to_dgl(G.build_graph(s, "alignn")), structures)
    result["ours"]["alignn+to_dgl"] = _stats(times, wall)

    if not args.no_alignn:
        from alignn.graphs import Graph
        from jarvis.core.atoms import Atoms

        jatoms = [Atoms.from_dict(r["atoms"]) for r in rows]

        def peer(a):
            return Graph.atom_dgl_multigraph(a, neighbor_strategy="k-nearest", cutoff=8.0, max_neighbors=12,
                                             atom_features="atomic_number", compute_line_graph=True,
                                             use_canonize=True)

        try:  # the DGL-free builder that alignn 2026 recommends (its graphs feed alignn_atomwise_pure)
            from alignn.torch_graph_builder import build_pure_torch_graph

            def pure(a):
                return build_pure_torch_graph(a, two_body_cutoff=8.0, max_neighbors=12,
                                              atom_features="atomic_number", compute_line_graph=True)

            _, times, wall = _time_each(pure, jatoms)
            result["alignn_2026.8.11_pure_torch"] = _stats(times, wall)
        except Exception as e:  # noqa: BLE001  (an optional peer: report, do not fail the benchmark)
            result["alignn_2026.8.11_pure_torch"] = {"error": f"{type(e).__name__}: {e}"}
        peer_graphs, times, wall = _time_each(peer, jatoms)
        result["alignn_2026.8.11"] = {
            **_stats(times, wall), "edges": int(sum(g.num_edges() for g, _ in peer_graphs)),
            "line_graph_edges": int(sum(lg.num_edges() for _, lg in peer_graphs)),
        }
        same = same_halved = same_vec = same_cos = n_cos = same_outside_ties = 0
        mismatched, other = [], []
        for s, gd, (g, lg) in zip(structures, ours["alignn"], peer_graphs):
            mine = _canon(gd.src, gd.dst, gd.dist)
            u, v = (t.numpy().astype(np.int64) for t in g.edges())
            r = g.edata["r"].numpy().astype(np.float64)
            d = np.linalg.norm(r, axis=1)
            ok = _same_edges(mine, _canon(u, v, d))
            keep = _halve_self_images(u, v, r)
            theirs_h = _canon(u[keep], v[keep], d[keep])
            ok_h = _same_edges(mine, theirs_h)
            same += ok
            same_halved += ok_h
            if ok_h and _same_vectors(gd, u[keep], v[keep], r[keep]):
                same_vec += 1
                if ok:  # alignn's line graph is only comparable without its duplicated self-image bonds
                    c1, c2 = np.sort(gd.cos.astype(np.float64)), np.sort(lg.edata["h"].numpy().astype(np.float64))
                    same_cos += len(c1) == len(c2) and np.allclose(c1, c2, atol=1e-4)
                    n_cos += 1
            if not ok_h:
                shells = _kth_distances(s)
                outside_ok = _same_edges(_outside(mine, shells), _outside(theirs_h, shells))
                same_outside_ties += outside_ok
                row = {"id": s.id, "atoms": s.num_atoms, "ours_edges": gd.num_edges,
                       "alignn_edges": int(g.num_edges()), "alignn_edges_halved": int(keep.sum())}
                (mismatched if outside_ok else other).append(row)
        ratio_total = result["alignn_2026.8.11"]["cpu_s"] / result["ours"]["alignn+to_dgl"]["cpu_s"]
        ratio_median = result["alignn_2026.8.11"]["median_ms"] / result["ours"]["alignn+to_dgl"]["median_ms"]
        result["comparison"] = {
            "edge_multisets_equal": int(same), "equal_after_halving_alignn_self_image_duplicates": int(same_halved),
            "edge_vectors_equal_too": int(same_vec),
            "bond_cosines_compared": int(n_cos), "bond_cosines_equal": int(same_cos),
            "others_equal_outside_the_12th_neighbour_tie_shells": int(same_outside_ties),
            "tie_shell_examples": mismatched[:5], "other_mismatches": other,
            "speedup_total": round(ratio_total, 1), "speedup_median": round(ratio_median, 1),
        }

    print("CPU time per structure, one process, one BLAS thread")
    print(f"{'builder':<26}{'structures/s':>14}{'median ms':>12}{'edges':>12}{'lg edges':>12}")
    for name, r in result["ours"].items():
        print(f"{'bench ' + name:<26}{r['structures_per_s']:>14}{r['median_ms']:>12}{r.get('edges', ''):>12}"
              f"{r.get('line_graph_edges', ''):>12}")
    if "alignn_2026.8.11" in result:
        r = result["alignn_2026.8.11"]
        print(f"{'alignn 2026.8.11 k-nearest':<26}{r['structures_per_s']:>14}{r['median_ms']:>12}{r['edges']:>12}"
              f"{r['line_graph_edges']:>12}")
        pr = result["alignn_2026.8.11_pure_torch"]
        if "error" in pr:
            print(f"alignn pure-torch builder: {pr['error']}")
        else:
            print(f"{'alignn 2026.8.11 pure-torch':<26}{pr['structures_per_s']:>14}{pr['median_ms']:>12}")
        c = result["comparison"]
        print(f"speedup (ALIGNN graph + line graph + cosines, DGL out): {c['speedup_total']}x total, "
              f"{c['speedup_median']}x median per structure")
        print(f"edge multisets equal: {c['edge_multisets_equal']}/{len(rows)}; after halving alignn's duplicated "
              f"self-image bonds: {c['equal_after_halving_alignn_self_image_duplicates']}/{len(rows)}; "
              f"of those, same edge vectors too: {c['edge_vectors_equal_too']}; bond cosines equal "
              f"{c['bond_cosines_equal']}/{c['bond_cosines_compared']} (where vectors agree, no self-image bonds); "
              f"of the rest, equal "
              f"outside each atom's 12th-neighbour tie shell: {c['others_equal_outside_the_12th_neighbour_tie_shells']}"
              f"/{len(rows) - c['equal_after_halving_alignn_self_image_duplicates']}")
        for m in c["tie_shell_examples"]:
            print("  differs in a tie shell:", m)
        for m in c["other_mismatches"]:
            print("  differs elsewhere:", m)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

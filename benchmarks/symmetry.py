"""How much work the symmetry-reduced graphs (bench/quotient.py) save on real data: members per class of atoms,
bonds and ALIGNN bond-angle triplets over a seeded random sample of JARVIS dft_3d, the spread per structure, and
the one-off cost of finding the classes.

    python benchmarks/symmetry.py --structures 2000 --seed 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import DEFAULT_DATA, load_structures  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--structures", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--spec", default="alignn", help="graph spec (default alignn: atoms, bonds and triplets)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    args = p.parse_args(argv)

    from bench.graphs import build_graph
    from bench.quotient import quotient_of, reduction

    structs, _, where = load_structures(args.structures, args.seed, Path(args.data))
    graphs = [build_graph(s, args.spec) for s in structs]
    t = time.perf_counter()
    qs = [quotient_of(g) for g in graphs]
    per_ms = 1e3 * (time.perf_counter() - t) / len(graphs)
    print(f"{where}; graph spec {args.spec}; classes found in {per_ms:.1f} ms per structure (once per dataset)")
    print("members per class, whole sample: " + ", ".join(f"{k} {v:.2f}x" for k, v in reduction(qs).items()))
    if graphs[0].has_line_graph:
        per = np.array([g.num_lg_edges / max(q.num_trip_classes, 1) for g, q in zip(graphs, qs)])
        what = "triplets"
    else:
        per = np.array([g.num_edges / max(q.num_edge_classes, 1) for g, q in zip(graphs, qs)])
        what = "bonds"
    print(f"per structure ({what}): median {np.median(per):.2f}x, 10th percentile {np.percentile(per, 10):.2f}x, "
          f"90th {np.percentile(per, 90):.2f}x; no reduction for {100 * np.mean(per < 1 + 1e-9):.1f} % of structures")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write tests/fixtures/published_reference.json: what elementembeddings' own API gives for every table crysbench
exposes as ``published:<name>``, so tests/test_published.py can compare crysbench's reader and standardisation
against the package without installing its heavy dependencies in the test environment.

Run in an environment with the full package (its dependencies: pandas, scikit-learn, umap-learn, openTSNE, ...):

    python3.11 -m venv /tmp/ee && /tmp/ee/bin/pip install 'elementembeddings==0.8.0' 'numpy<2'
    /tmp/ee/bin/python scripts/make_published_reference.py

Per table: the package's width and element keys, and per element the sum of the vector and its dot product with
a fixed seeded random direction (two numbers that change when any component does), plus Fe's first 8 components.
Standardised tables go through ``Embedding.standardise()``, as crysbench's policy says.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from elementembeddings import __file__ as _ee_file  # noqa: E402
from elementembeddings.core import Embedding  # noqa: E402
from importlib import metadata  # noqa: E402

from bench.published import CATALOGUE  # noqa: E402


def direction(dim: int) -> np.ndarray:
    return np.random.default_rng([7, dim]).standard_normal(dim)


def main() -> None:
    out = {"package_version": metadata.version("elementembeddings"), "tables": {}}
    for name, t in CATALOGUE.items():
        emb = Embedding.load_data(name)
        if t.standardise:
            emb = emb.standardise()
        vecs = {k: np.asarray(v, dtype=np.float64) for k, v in emb.embeddings.items()}
        r = direction(emb.dim)
        out["tables"][name] = {
            "dim": int(emb.dim),
            "standardised": bool(t.standardise),
            "keys": list(vecs),
            "sum": {k: float(v.sum()) for k, v in vecs.items()},
            "projection": {k: float(v @ r) for k, v in vecs.items()},
            "Fe_first8": [float(x) for x in vecs["Fe"][:8]],
        }
    path = REPO / "tests" / "fixtures" / "published_reference.json"
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes) from {_ee_file}")


if __name__ == "__main__":
    main()

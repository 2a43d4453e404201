"""Inspect and export per-element embedding tables: CGCNN ``atom_init.json`` export, a report (coverage, cosine
statistics, nearest elements of probe elements, a 2-D PCA map coloured by periodic-table group) and a
nearest-neighbour chemistry score (how often an element's most similar element shares its group).

Any table works: a pretrained one (``bench pretrain``), the shipped CrysAtom vectors (``crysatom-published``;
Mukherjee et al., LoG 2024), a published embedding (``published:<name>``, after its policy: ``bench/published.py``)
or the ``random`` control (``bench.featurizers.random_vectors``), so a learned table can always be compared
against a table of the same width with no chemistry in it. ``compare`` puts several side by side: coverage and
the group agreement on each table's own elements and on the elements all of them cover (the fair comparison),
with one picture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

from bench.paths import atomic_path
from bench.structures import ELEMENTS, Z_OF

PROBES = ("Li", "O", "Fe", "Cl")
F_BLOCK = set(range(57, 72)) | set(range(89, 104))  # La..Lu, Ac..Lr: no single group; left out of group scores


def group_of(z: int) -> int | None:
    """IUPAC group 1..18 of element ``z``; None for the lanthanides and actinides (La..Lu, Ac..Lr)."""
    if z in F_BLOCK:
        return None
    if z == 1:
        return 1
    if z == 2:
        return 18
    # (first Z of the period, last Z) for periods 2..7
    for first, last in ((3, 10), (11, 18), (19, 36), (37, 54), (55, 86), (87, 118)):
        if first <= z <= last:
            pos = z - first  # 0-based position within the period
            if last - first + 1 == 8:  # periods 2, 3: s-block then p-block
                return pos + 1 if pos < 2 else pos + 11
            if z >= first + 2 and first in (55, 87):
                pos -= 14  # skip the f-block (already excluded above)
            return pos + 1
    raise ValueError(f"no element with Z = {z}")


def resolve_table(spec: str, dim: int | None = None):
    """A ``bench.embeddings.Table`` from a path, ``crysatom-published``, ``cgcnn``, ``published:<name>`` or
    ``random[:SEED[:WIDTH]]`` (width ``dim`` when the spec names none, default 200)."""
    from bench.embeddings import CRYSATOM_PUBLISHED, Table, load_table, table_hash

    p = Path(spec).expanduser()
    if p.is_file():
        return load_table(p)
    if spec == "crysatom-published":
        return load_table(CRYSATOM_PUBLISHED)
    if spec == "cgcnn":
        from bench.featurizers import cgcnn_vectors

        vecs = cgcnn_vectors()
        return Table(vecs, {"kind": "CGCNN bits", "source": "jarvis-tools jarvis/core/atom_init.json"}, table_hash(vecs))
    name, _, arg = spec.partition(":")
    if name == "published":
        from bench import published

        t = published.load(published.entry(arg).name)
        if dim is not None and dim != t.dim:
            raise published.PublishedError(f"table {spec!r} is {t.dim}-d but --dim {dim} was given")
        return t
    if name == "random":
        from bench.featurizers import DEFAULT_RANDOM_DIM, FeaturizerError, parse_random, random_vectors

        seed, width = parse_random(arg or None, spec)
        if width is not None and dim is not None and width != dim:
            raise FeaturizerError(f"table {spec!r} is {width}-d but --dim {dim} was given")
        width = width or dim or DEFAULT_RANDOM_DIM
        vecs = random_vectors(width, seed)
        return Table(vecs, {"kind": "random control", "seed": seed, "dim": width}, table_hash(vecs))
    raise FileNotFoundError(f"embedding table {spec!r}: no such file (also accepted: crysatom-published, "
                            "cgcnn, published:<name>, random[:SEED[:WIDTH]])")


def export_atom_init(vectors: Mapping[str, np.ndarray], out: str | Path) -> Path:
    """CGCNN layout: ``{"1": [...], "8": [...]}`` keyed by Z as strings, in Z order; written atomically."""
    body = {str(Z_OF[s]): [float(x) for x in np.asarray(v, dtype=np.float64)]
            for s, v in sorted(vectors.items(), key=lambda kv: Z_OF[kv[0]])}
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(body))
    return out


def _matrix(vectors: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    syms = sorted(vectors, key=lambda s: Z_OF[s])
    m = np.stack([np.asarray(vectors[s], dtype=np.float64) for s in syms])
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return syms, m / np.where(norms > 0, norms, 1.0)


def cosine_matrix(vectors: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    syms, m = _matrix(vectors)
    return syms, m @ m.T


def nearest(vectors: Mapping[str, np.ndarray], symbol: str, k: int = 5) -> list[tuple[str, float]]:
    syms, cos = cosine_matrix(vectors)
    if symbol not in syms:
        return []
    i = syms.index(symbol)
    order = [j for j in np.argsort(-cos[i], kind="stable") if j != i][:k]
    return [(syms[j], float(cos[i, j])) for j in order]


def group_agreement(vectors: Mapping[str, np.ndarray], k: int = 1) -> dict:
    """Fraction of elements (groups 1-18, f-block left out) whose k most cosine-similar elements (among those
    with a group) include one of the same group. A chemistry-free table scores near the chance rate."""
    syms, cos = cosine_matrix(vectors)
    groups = [group_of(Z_OF[s]) for s in syms]
    keep = [i for i, g in enumerate(groups) if g is not None]
    hits = 0
    for i in keep:
        others = [j for j in keep if j != i]
        top = sorted(others, key=lambda j: (-cos[i, j], j))[:k]
        hits += any(groups[j] == groups[i] for j in top)
    # chance: probability that k random others include a same-group element
    chance = []
    for i in keep:
        same = sum(1 for j in keep if j != i and groups[j] == groups[i])
        n = len(keep) - 1
        p_none = 1.0
        for t in range(min(k, n)):
            p_none *= max(n - same - t, 0) / (n - t)
        chance.append(1 - p_none)
    return {"k": k, "elements": len(keep), "hits": hits, "fraction": hits / len(keep) if keep else float("nan"),
            "chance": float(np.mean(chance)) if chance else float("nan")}


def report(spec: str, out_dir: str | Path | None = None, dim: int | None = None) -> dict:
    """Summary of a table; with ``out_dir`` writes ``report.json``, ``report.md`` and ``projection.png``."""
    table = resolve_table(spec, dim)
    vectors = table.vectors
    syms, cos = cosine_matrix(vectors)
    iu = np.triu_indices(len(syms), k=1)
    pair = cos[iu]
    present = set(syms)
    rep = {
        "table": spec,
        "hash": table.hash,
        "dim": table.dim,
        "meta": {k: table.meta[k] for k in ("kind", "objective", "encoder", "epochs", "seed", "config_hash")
                 if k in table.meta},
        "coverage": {
            "elements": len(syms),
            "of": 118,
            "missing_z_1_to_100": [ELEMENTS[z] for z in range(1, 101) if ELEMENTS[z] not in present],
        },
        "cosine": {"mean": float(pair.mean()) if len(pair) else float("nan"),
                   "std": float(pair.std()) if len(pair) else float("nan"),
                   "min": float(pair.min()) if len(pair) else float("nan"),
                   "max": float(pair.max()) if len(pair) else float("nan")},
        "nearest": {p: [[s, round(c, 4)] for s, c in nearest(vectors, p, 5)] for p in PROBES if p in present},
        "group_agreement": {"k1": group_agreement(vectors, 1), "k3": group_agreement(vectors, 3)},
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rep["projection"] = str(projection_png(vectors, out_dir / "projection.png", title=Path(spec).name))
        _write(out_dir, "report", rep, format_report(rep))
    return rep


def _write(out_dir: Path, stem: str, rep: dict, markdown: str) -> None:
    with atomic_path(out_dir / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(rep, indent=2))
    with atomic_path(out_dir / f"{stem}.md") as tmp:
        tmp.write_text(markdown)


def format_report(rep: dict) -> str:
    cov, c = rep["coverage"], rep["cosine"]
    ga1, ga3 = rep["group_agreement"]["k1"], rep["group_agreement"]["k3"]
    lines = [
        f"# Embedding table report: {rep['table']}",
        "",
        f"- width {rep['dim']}, hash {rep['hash'][:16]}",
        f"- coverage: {cov['elements']} of {cov['of']} elements; missing among Z 1-100: "
        + (", ".join(cov["missing_z_1_to_100"]) or "none"),
        f"- pairwise cosine: mean {c['mean']:.3f}, std {c['std']:.3f}, min {c['min']:.3f}, max {c['max']:.3f}",
        f"- nearest element shares the periodic-table group: {ga1['hits']}/{ga1['elements']} "
        f"({ga1['fraction']:.3f}; chance {ga1['chance']:.3f}); within the 3 nearest: {ga3['fraction']:.3f} "
        f"(chance {ga3['chance']:.3f})",
        "",
        "| probe | nearest elements (cosine) |",
        "|---|---|",
    ]
    for p, nn in rep["nearest"].items():
        lines.append(f"| {p} | " + ", ".join(f"{s} ({v:.3f})" for s, v in nn) + " |")
    if "projection" in rep:
        lines += ["", f"![PCA projection]({Path(rep['projection']).name})"]
    return "\n".join(lines) + "\n"


def _save_png(fig, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def projection_png(vectors: Mapping[str, np.ndarray], out: str | Path, title: str = "") -> Path:
    """PCA (numpy SVD of the centred, row-normalised table) to 2-D; points coloured by group, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    syms, m = _matrix(vectors)
    x = m - m.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    xy = u[:, :2] * s[:2] if len(s) >= 2 else np.column_stack([u[:, 0] * s[0], np.zeros(len(syms))])
    var = (s**2) / max((s**2).sum(), 1e-300)
    groups = [group_of(Z_OF[sym]) for sym in syms]
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(9, 7), dpi=120)
    for g in sorted({g for g in groups if g is not None}) + [None]:
        idx = [i for i, gg in enumerate(groups) if gg == g]
        if not idx:
            continue
        if g is None:  # a marker of its own: tab20 has greys that groups use
            ax.scatter(xy[idx, 0], xy[idx, 1], s=28, color="black", marker="x", label="La/Ac series")
        else:
            ax.scatter(xy[idx, 0], xy[idx, 1], s=28, color=cmap((g - 1) % 20), label=f"group {g}")
    for i, sym in enumerate(syms):
        ax.annotate(sym, xy[i], fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(f"PC1 ({var[0]:.1%})")
    ax.set_ylabel(f"PC2 ({var[1]:.1%})" if len(var) > 1 else "PC2")
    ax.set_title(f"{title} ({len(syms)} elements, {m.shape[1]}-d)")
    ax.legend(fontsize=6, ncol=2, loc="best")
    return _save_png(fig, out)


# ---- several tables side by side --------------------------------------------------------------------------


def compare(specs: list[str], out_dir: str | Path | None = None, dim: int | None = None) -> dict:
    """Coverage and nearest-neighbour group agreement of several tables; with ``out_dir`` writes
    ``compare.json``, ``compare.md`` and ``compare.png``. Agreement is given on each table's own elements and on
    the elements every table covers, since a table that lacks hard elements would otherwise look better."""
    if len(set(specs)) != len(specs):
        raise ValueError(f"a table is repeated: {', '.join(specs)}")
    tables = [(spec, resolve_table(spec, dim)) for spec in specs]
    common = set.intersection(*(set(t.vectors) for _, t in tables))
    rows = []
    for spec, t in tables:
        shared = {s: v for s, v in t.vectors.items() if s in common}
        rows.append({
            "table": spec,
            "hash": t.hash,
            "dim": t.dim,
            "elements": len(t.vectors),
            "missing_z_1_to_94": [ELEMENTS[z] for z in range(1, 95) if ELEMENTS[z] not in t.vectors],
            "group_agreement": {"k1": group_agreement(t.vectors, 1), "k3": group_agreement(t.vectors, 3)},
            "group_agreement_common": {"k1": group_agreement(shared, 1), "k3": group_agreement(shared, 3)}
            if len(shared) > 1 else None,
        })
    rep = {"tables": rows, "common_elements": sorted(common, key=lambda s: Z_OF[s])}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rep["picture"] = str(compare_png(tables, rep, out_dir / "compare.png"))
        _write(out_dir, "compare", rep, format_compare(rep))
    return rep


def format_compare(rep: dict) -> str:
    n = len(rep["common_elements"])
    lines = [
        "# Embedding tables side by side",
        "",
        f"Nearest element by cosine shares the periodic-table group (groups 1-18; the La/Ac series left out), on "
        f"each table's own elements and on the {n} elements every table covers.",
        "",
        "| table | width | elements | missing (Z 1-94) | nearest same group | chance | on common elements | chance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["tables"]:
        own, com = r["group_agreement"]["k1"], (r["group_agreement_common"] or {}).get("k1")
        miss = r["missing_z_1_to_94"]
        lines.append(
            f"| {r['table']} | {r['dim']} | {r['elements']} | {' '.join(miss) if miss else 'none'} | "
            f"{own['fraction']:.3f} ({own['hits']}/{own['elements']}) | {own['chance']:.3f} | "
            + (f"{com['fraction']:.3f} ({com['hits']}/{com['elements']}) | {com['chance']:.3f} |" if com else "- | - |")
        )
    if "picture" in rep:
        lines += ["", f"![comparison]({Path(rep['picture']).name})"]
    return "\n".join(lines) + "\n"


def compare_png(tables: list, rep: dict, out: str | Path) -> Path:
    """Left: group agreement of each table (own and common elements) against chance; right: which elements
    Z 1-94 each table covers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tables)
    labels = [r["table"] if len(r["table"]) <= 28 else "..." + r["table"][-25:] for r in rep["tables"]]
    fig, (ax, cov) = plt.subplots(1, 2, figsize=(15, 1.2 + 0.38 * n), dpi=120,
                                  gridspec_kw={"width_ratios": [1, 2.2]})
    y = np.arange(n)
    own = [r["group_agreement"]["k1"]["fraction"] for r in rep["tables"]]
    com = [(r["group_agreement_common"] or {}).get("k1", {}).get("fraction", np.nan) for r in rep["tables"]]
    chance = [r["group_agreement"]["k1"]["chance"] for r in rep["tables"]]
    ax.barh(y - 0.2, own, height=0.4, color="tab:blue", label="own elements")
    ax.barh(y + 0.2, com, height=0.4, color="tab:orange", label=f"{len(rep['common_elements'])} common elements")
    ax.scatter(chance, y, marker="|", s=200, color="black", label="chance", zorder=3)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("nearest element shares its group")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    grid = np.array([[1.0 if ELEMENTS[z] in t.vectors else 0.0 for z in range(1, 95)] for _, t in tables])
    cov.imshow(grid, aspect="auto", cmap="Greens", vmin=0, vmax=1.3, interpolation="nearest")
    cov.set_yticks(y, [""] * n)
    ticks = [z for z in range(1, 95) if z in (1, 10, 18, 36, 54, 57, 71, 86, 89, 94)]
    cov.set_xticks([z - 1 for z in ticks], [f"{ELEMENTS[z]}" for z in ticks], fontsize=7)
    for i, r in enumerate(rep["tables"]):
        for s in r["missing_z_1_to_94"]:
            cov.text(Z_OF[s] - 1, i, s, ha="center", va="center", fontsize=5, color="red", rotation=90)
    cov.set_title("coverage of Z 1-94 (missing in red)", fontsize=9)
    return _save_png(fig, out)

"""Published element embeddings as featurizers (``published:<name>``), read from the ``elementembeddings`` package.

The tables are those collected by ElementEmbeddings (Onwuli, Butler & Walsh; WMD-group/ElementEmbeddings, MIT;
PyPI ``elementembeddings`` 0.8.0), which ships them as plain CSV/JSON files under
``elementembeddings/data/element_representations/``. crysbench reads those files as data through the
distribution's file list (``importlib.metadata``) and never imports the package's modules, so its plotting and
dimensionality-reduction dependencies (seaborn, scikit-learn, umap-learn, openTSNE, numba) are not needed at run
time, and the same files serve Python 3.10, which the package itself does not declare (see the README).

What the model sees (the *policy*, recorded in every run's identity next to the table hash):

- descriptor tables whose columns are raw physical quantities on different scales (``magpie``, ``oliynyk``,
  ``xenonpy``) are standardised per column over the table's elements (mean 0, population standard deviation 1),
  as ``elementembeddings.core.Embedding.standardise`` does (scikit-learn's ``StandardScaler``); sums are exact
  (``math.fsum``) so the table hash is the same on every machine. The ``_sc`` variants are ElMD's own scaled
  copies and are used as shipped, like every learned table;
- rows under names that are not element symbols are left out: megnet16's ``Null`` (the package drops it too) and
  random_200's old placeholder names ``Uut``, ``Uup``, ``Uuh`` (Z >= 113, where ``Uuh`` labels two rows);
- megnet16's Po, At, Rn, Fr and Ra rows are treated as missing: their norms (0.09-0.13) match the ``Null`` row's
  (0.11), about 10x below every trained row (>= 0.52), i.e. they kept their initialisation (no training
  structure contained them);
- an element a table lacks gets the trainable fallback row every table featurizer gives it
  (``bench.featurizers.TableFeaturizer``), counted over the task's elements when a run starts.

Papers: Magpie (Ward et al., npj Comput. Mater. 2, 16028, 2016); Oliynyk (Oliynyk et al., Chem. Mater. 28, 7324,
2016); XenonPy (Liu et al., Adv. Mater. 33, 2102507, 2021); MEGNet (Chen et al., Chem. Mater. 31, 3564, 2019);
mat2vec (Tshitoyan et al., Nature 571, 95, 2019); Matscholar (Weston et al., J. Chem. Inf. Model. 59, 3692, 2019);
SkipAtom (Antunes et al., npj Comput. Mater. 8, 44, 2022); CGNF (Jang et al., Matter 7, 2294, 2024); CrystaLLM
(Antunes et al., arXiv:2307.04340); MACE-MP-0 (Batatia et al., arXiv:2401.00096); SevenNet (Park et al.,
arXiv:2402.03789); ORB-v2 (Neumann et al., arXiv:2410.22570); CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031,
2023); MatSciBERT (Gupta et al., npj Comput. Mater. 8, 102, 2022); Chemeleon (Park, Onwuli & Walsh, Nat. Commun.
16, 4869, 2025). Cite the table's paper and ElementEmbeddings when you use one.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bench.cli import UserError
from bench.registry import suggest
from bench.structures import ELEMENTS, Z_OF

PACKAGE = "elementembeddings"
# The release whose files the catalogue below was measured on (widths, coverage; tests/test_published.py).
PACKAGE_VERSION = "0.8.0"
DATA_DIR = "elementembeddings/data/element_representations"
INSTALL_HINT = f"pip install --no-deps --ignore-requires-python '{PACKAGE}=={PACKAGE_VERSION}'"

_MIT = "MIT (elementembeddings)"
_ELMD = "MIT (elementembeddings); file from ElMD: GPL-3.0 (its setup.py) / LGPL-3.0 (its classifier)"
_CBFV = "MIT (elementembeddings); file from CBFV: no licence stated"


class PublishedError(UserError, ValueError):
    """A published table that cannot be read (package missing, unknown name, unexpected file)."""


@dataclass(frozen=True)
class PublishedTable:
    name: str  # the name after ``published:`` (elementembeddings' ``Embedding.load_data`` name)
    title: str
    file: str  # under DATA_DIR (what load_data reads for this name)
    width: int
    elements: int  # elements with a vector after the policy (Z 1..118)
    missing_z_le_94: tuple[str, ...]  # elements up to Pu the table lacks (after the policy)
    paper: str
    origin: str
    licence: str
    standardise: bool = False
    untrained: tuple[str, ...] = ()  # rows present in the file but treated as missing


CATALOGUE: dict[str, PublishedTable] = {t.name: t for t in (
    PublishedTable("magpie", "Magpie element properties", "magpie.csv", 22, 97, (),
                   "Ward et al., npj Comput. Mater. 2, 16028 (2016)",
                   "CBFV cbfv/element_properties/magpie.csv (22 Magpie element properties)", _CBFV, standardise=True),
    PublishedTable("magpie_sc", "Magpie properties, scaled by ElMD", "magpie_sc.json", 22, 97, (),
                   "Ward et al., npj Comput. Mater. 2, 16028 (2016)",
                   "ElMD ElMD/el_lookup/magpie_sc.json (Magpie, scaled by ElMD)", _ELMD),
    PublishedTable("oliynyk", "Oliynyk element properties", "oliynyk_preprocessed.csv", 44, 85, ("Po", "At", "Rn", "Fr", "Ra", "Ac", "Pa", "Np", "Pu"),
                   "Oliynyk et al., Chem. Mater. 28, 7324 (2016)",
                   "CBFV cbfv/element_properties/oliynyk.csv, gaps filled by elementembeddings", _CBFV,
                   standardise=True),
    PublishedTable("oliynyk_sc", "Oliynyk properties, scaled by ElMD", "oliynyk_sc.json", 44, 85, ("Po", "At", "Rn", "Fr", "Ra", "Ac", "Pa", "Np", "Pu"),
                   "Oliynyk et al., Chem. Mater. 28, 7324 (2016)",
                   "ElMD ElMD/el_lookup/oliynyk_sc.json (Oliynyk, scaled by ElMD)", _ELMD),
    PublishedTable("xenonpy", "XenonPy element features", "xenonpy_element_features.csv", 58, 94, (),
                   "Liu et al., Adv. Mater. 33, 2102507 (2021); Kusaba et al., Comput. Mater. Sci. 211, 111496 (2022)",
                   "XenonPy's 58 element features (yoshida-lab/XenonPy)", _MIT, standardise=True),
    PublishedTable("megnet16", "MEGNet element embedding", "megnet16.json", 16, 89, ("Po", "At", "Rn", "Fr", "Ra"),
                   "Chen et al., Chem. Mater. 31, 3564 (2019)",
                   "ElMD ElMD/el_lookup/megnet16.json (element embedding of MEGNet's formation-energy model)", _ELMD,
                   untrained=("Po", "At", "Rn", "Fr", "Ra")),
    PublishedTable("mat2vec", "mat2vec word embeddings", "mat2vec.csv", 200, 118, (),
                   "Tshitoyan et al., Nature 571, 95 (2019)",
                   "CBFV cbfv/element_properties/mat2vec.csv", _CBFV),
    PublishedTable("matscholar", "Matscholar word embeddings", "matscholar-embedding.json", 200, 103, (),
                   "Weston et al., J. Chem. Inf. Model. 59, 3692 (2019)",
                   "ElMD ElMD/el_lookup/matscholar.json", _ELMD),
    PublishedTable("skipatom", "SkipAtom (induced)", "skipatom_20201009_induced.csv", 200, 86, ("He", "Ne", "Ar", "Po", "At", "Rn", "Fr", "Ra"),
                   "Antunes et al., npj Comput. Mater. 8, 44 (2022)",
                   "lantunes/skipatom data/skipatom_20201009_induced.csv",
                   "MIT (elementembeddings); file from lantunes/skipatom: MIT"),
    PublishedTable("random_200", "random N(0, 1) vectors (a control)", "random_200_new.csv", 200, 114, (),
                   "none: N(0, 1) components, numpy default_rng(42) (a control, elementembeddings)",
                   "elementembeddings random_200_new.csv", _MIT),
    PublishedTable("cgnf", "CGNF (CGCNN node embeddings)", "cgnf.json", 90, 100, (),
                   "Jang et al., Matter 7, 2294 (2024)",
                   "kaist-amsg/Synthesizability-stoi-CGNF cgcnn_hd_rcut4_nn8.element_embedding.json",
                   "MIT (elementembeddings); file from Synthesizability-stoi-CGNF: no licence stated"),
    PublishedTable("crystallm", "CrystaLLM token embeddings", "crystallm_v24c.dim512_atom_vectors.csv", 512, 89, ("Po", "At", "Rn", "Fr", "Ra"),
                   "Antunes et al., arXiv:2307.04340 (2023)",
                   "CrystaLLM v24c atom vectors (elementembeddings)", _MIT),
    PublishedTable("mace_mp0", "MACE-MP-0 descriptors", "mace_mp0.csv", 128, 87, ("Ne", "Ar", "Po", "At", "Rn", "Fr", "Ra"),
                   "Batatia et al., arXiv:2401.00096 (2024)",
                   "MACE-MP-0 medium invariant descriptors averaged per element over MP-20 (elementembeddings)", _MIT),
    PublishedTable("sevennet", "SevenNet-0 node features", "sevennet.csv", 128, 87, ("Ne", "Ar", "Po", "At", "Rn", "Fr", "Ra"),
                   "Park et al., arXiv:2402.03789 (2024)",
                   "SevenNet-0 l=0 node features averaged per element over MP-20 (elementembeddings)", _MIT),
    PublishedTable("orb_v2", "ORB-v2 node features", "orb_v2.csv", 256, 87, ("Ne", "Ar", "Po", "At", "Rn", "Fr", "Ra"),
                   "Neumann et al., arXiv:2410.22570 (2024)",
                   "ORB-v2 node features averaged per element over MP-20 (elementembeddings)", _MIT),
    PublishedTable("chgnet", "CHGNet node features", "chgnet.csv", 64, 87, ("Ne", "Ar", "Po", "At", "Rn", "Fr", "Ra"),
                   "Deng et al., Nat. Mach. Intell. 5, 1031 (2023)",
                   "CHGNet last atom-convolution features averaged per element over MP-20 (elementembeddings)", _MIT),
    PublishedTable("matscibert", "MatSciBERT token embeddings", "matscibert.csv", 768, 97, (),
                   "Gupta et al., npj Comput. Mater. 8, 102 (2022)",
                   "MatSciBERT token embeddings of element symbols (elementembeddings)", _MIT),
    PublishedTable("chemeleon", "Chemeleon node features", "chemeleon.csv", 512, 87, ("Ne", "Ar", "Po", "At", "Rn", "Fr", "Ra"),
                   "Park, Onwuli & Walsh, Nat. Commun. 16, 4869 (2025)",
                   "Chemeleon-DNG node features averaged per element over MP-20 (elementembeddings)", _MIT),
)}


def entry(name: str | None) -> PublishedTable:
    if not name:
        raise PublishedError("featurizer 'published' needs a table name: published:<name>, one of "
                             + ", ".join(CATALOGUE) + " (see `bench list featurizers`)")
    try:
        return CATALOGUE[name]
    except KeyError:
        raise PublishedError(suggest(name, list(CATALOGUE), "published table")) from None


def policy(t: PublishedTable) -> dict[str, Any]:
    """What is done to the file's numbers before a model sees them (part of a run's identity)."""
    return {
        "standardise": "per-column z-score over the table's elements" if t.standardise else None,
        "untrained_rows_as_missing": list(t.untrained),
        "missing": "trainable fallback row",
    }


def _distribution() -> metadata.Distribution:
    try:
        return metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise PublishedError(
            f"published tables need the {PACKAGE} package (crysbench reads its data files and does not import "
            f"it): {INSTALL_HINT}  (`make install` does this)"
        ) from None


def data_path(t: PublishedTable) -> Path:
    dist = _distribution()
    rel = f"{DATA_DIR}/{t.file}"
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise PublishedError(f"published:{t.name}: {PACKAGE} {dist.version} has no {rel} (crysbench documents "
                             f"{PACKAGE_VERSION}): {INSTALL_HINT}")
    return path


def package_version() -> str | None:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PublishedError(f"{where}: {value!r} is not a number")
    try:
        x = float(value)
    except ValueError:
        raise PublishedError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(x):
        raise PublishedError(f"{where}: NaN or inf")
    return x


def read_file(path: str | Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The file's rows as {symbol: float64 vector} and the row names that are not element symbols (left out).

    CSV: header ``element,<column>...``, one row per element; JSON: ``{symbol: [numbers]}``. A real element
    listed twice, a ragged row or a non-number is an error naming the file."""
    path = Path(path)
    rows: list[tuple[str, list[Any]]]
    if path.suffix == ".csv":
        reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8")))
        header = next(reader)
        if not header or header[0] != "element":
            raise PublishedError(f"{path}: expected a first column named 'element', got {header[:1]}")
        rows = [(r[0], r[1:]) for r in reader if r]
    else:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise PublishedError(f"{path}: expected a JSON mapping {{symbol: [numbers]}}")
        rows = list(raw.items())
    vectors: dict[str, np.ndarray] = {}
    ignored: list[str] = []
    width = None
    for sym, vec in rows:
        if not isinstance(vec, list):
            raise PublishedError(f"{path}: entry {sym!r} is not a list of numbers")
        where = f"{path}: entry {sym!r}"
        v = np.array([_number(x, where) for x in vec], dtype=np.float64)
        if width is None:
            width = len(v)
        elif len(v) != width:
            raise PublishedError(f"{where} has {len(v)} values, the first row {width}")
        if sym not in Z_OF:
            ignored.append(sym)
            continue
        if sym in vectors:
            raise PublishedError(f"{path}: element {sym!r} is listed twice")
        vectors[sym] = v
    return vectors, ignored


def standardise(vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per column: (x - mean) / std over the rows, population std; a constant column is only centred
    (scikit-learn's StandardScaler, which elementembeddings' ``standardise`` uses). Exact sums (math.fsum), so
    the result, and the table hash, do not depend on the machine's summation order."""
    syms = list(vectors)
    m = np.stack([vectors[s] for s in syms])
    n = m.shape[0]
    out = np.empty_like(m)
    for j in range(m.shape[1]):
        col = m[:, j]
        mean = math.fsum(col.tolist()) / n
        centred = col - mean
        std = math.sqrt(math.fsum((centred * centred).tolist()) / n)
        out[:, j] = centred / std if std > 0 else centred
    return {s: out[i] for i, s in enumerate(syms)}


def load(name: str):
    """``bench.embeddings.Table`` of ``published:<name>`` after the policy, with provenance in ``meta``."""
    from bench.embeddings import Table, table_hash

    t = entry(name)
    path = data_path(t)
    vectors, ignored = read_file(path)
    width = len(next(iter(vectors.values())))
    if width != t.width:
        raise PublishedError(f"published:{name}: {path} is {width} wide; crysbench documents {t.width} "
                             f"({PACKAGE} {PACKAGE_VERSION}, installed {package_version()})")
    for s in t.untrained:
        vectors.pop(s, None)
    if t.standardise:
        vectors = standardise(vectors)
    vectors = {s: vectors[s] for s in sorted(vectors, key=lambda s: Z_OF[s])}
    meta = {
        "kind": "published",
        "name": name,
        "package": PACKAGE,
        "package_version": package_version(),
        "file": f"{DATA_DIR}/{t.file}",
        "paper": t.paper,
        "origin": t.origin,
        "licence": t.licence,
        "policy": policy(t),
        "ignored_rows": ignored,
    }
    return Table(vectors, meta, table_hash(vectors))


def describe(t: PublishedTable) -> dict[str, Any]:
    """One row of ``bench list featurizers`` (documented values; no file is read)."""
    return {
        "name": f"published:{t.name}",
        "description": f"{t.title}; {'standardised per column' if t.standardise else 'as shipped'}"
                       f"{'; untrained rows as missing' if t.untrained else ''}; frozen",
        "width": t.width,
        "elements": t.elements,
        "missing_z_le_94": list(t.missing_z_le_94),
        "paper": t.paper,
        "origin": f"{PACKAGE} {PACKAGE_VERSION}: {DATA_DIR}/{t.file}; {t.origin}",
        "licence": t.licence,
        "policy": policy(t),
        "frozen": True,
    }


def missing_z_le_94(symbols) -> list[str]:
    have = set(symbols)
    return [ELEMENTS[z] for z in range(1, 95) if ELEMENTS[z] not in have]

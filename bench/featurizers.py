"""Atom featurizers: element (atomic number Z) -> input vector. The axis the benchmark measures.

``build_featurizer(spec, dim=None)`` returns a ``Featurizer`` (an ``nn.Module``) with ``forward(Z) -> (N, dim)``
and attributes ``dim``, ``name`` (the spec), ``table_hash`` (sha256 of the canonical table JSON, see
``bench.embeddings``; None for ``onehot`` and ``learned``), ``coverage`` (``{"present": n, "missing":
[symbols]}`` over Z = 1..118) and ``policy`` (None, or what was done to a published table's numbers).

Specs (registry ``FEATURIZERS``; the name before ``:`` is the registry key):

- ``onehot``: one-hot of Z over Z = 1..118, **118 columns** (column Z-1; no column for Z = 0).
- ``cgcnn``: the 92 CGCNN bits (Xie & Grossman, PRL 2018), from the table jarvis-tools ships as
  ``jarvis/core/atom_init.json`` (Z = 1..100). Frozen.
- ``learned``: a trainable ``nn.Embedding`` (119 rows; row 0 unused), width ``dim`` (default 64; the runner
  passes each encoder's reference width, ``bench.encoders.reference_feature_dim``).
- ``random``: per-element seeded random unit vectors (a control: same width as a real table, no chemistry).
  Width ``dim`` (default 200, the CrysAtom width). Frozen. ``random:<seed>`` picks another seed (default 0),
  ``random:<seed>:<width>`` another width (the sweep matches the width of the tables under test).
- ``crysatom-published``: the shipped CrysAtom 200-d table (Mukherjee et al., LoG 2024; see bench/embeddings.py).
- ``published:<name>``: a published element embedding (magpie, mat2vec, skipatom, mace_mp0, ...) read from the
  ``elementembeddings`` package's data files, with its recorded policy (``bench/published.py``). Frozen.
- ``embedding:<path.json>``: a frozen table from a JSON file.
- ``embedding-init:<path.json>``: a trainable table initialised from a JSON file (fine-tuned).

Elements a table lacks fall back to a trainable row each (also for frozen tables), so a missing element never
silently becomes zeros. ``task_coverage`` counts them over the elements a task actually contains (the runner
calls it once per run and announces the missing ones with one ``CoverageWarning``) and refuses a table that
covers none of them.
"""

from __future__ import annotations

import functools
import json
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from bench.cli import UserError
from bench.embeddings import CRYSATOM_PUBLISHED, TableError, load_table, table_hash
from bench.registry import FEATURIZERS, RegistryError
from bench.structures import ELEMENTS, MAX_Z

DEFAULT_LEARNED_DIM = 64
DEFAULT_RANDOM_DIM = 200


class FeaturizerError(UserError, ValueError):
    pass


class CoverageWarning(UserWarning):
    """Some elements of a task are not in the table: they train a fallback row each."""


_formatwarning = warnings.formatwarning


def _format_coverage(message, category, filename, lineno, line=None) -> str:
    # one plain line for the user (the default adds our file, line and source line); other warnings unchanged
    if isinstance(category, type) and issubclass(category, CoverageWarning):
        return f"bench: {message}\n"
    return _formatwarning(message, category, filename, lineno, line)


warnings.formatwarning = _format_coverage


class Featurizer(nn.Module):
    """Base: maps a LongTensor of atomic numbers (N,) to float features (N, dim)."""

    name: str
    dim: int
    table_hash: str | None = None
    policy: dict | None = None  # what was done to a published table's numbers (part of a run's identity)
    coverage: dict

    def __init__(self, name: str, dim: int) -> None:
        super().__init__()
        self.name = name
        self.dim = int(dim)
        self.coverage = {"present": MAX_Z, "missing": []}

    def _check(self, Z: torch.Tensor) -> None:
        if Z.dtype not in (torch.int64, torch.int32):
            raise FeaturizerError(f"featurizer {self.name!r}: expected integer atomic numbers, got {Z.dtype}")
        if Z.numel() and (int(Z.min()) < 1 or int(Z.max()) > MAX_Z):
            raise FeaturizerError(
                f"featurizer {self.name!r}: atomic numbers must lie in 1..{MAX_Z}, got {int(Z.min())}..{int(Z.max())}"
            )

    def covered(self, z: int) -> bool:
        """Whether element ``z`` has its own input (not a fallback row)."""
        return ELEMENTS[z] not in self.coverage["missing"]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}"


def task_coverage(featurizer: Featurizer, numbers: Iterable[int], task: str, *, announce: bool = True) -> dict:
    """Coverage of the elements a task contains: ``{"task_elements", "present", "missing"}``. Raises
    ``FeaturizerError`` when the table covers none of them (a model would see fallback rows only); with
    ``announce``, one ``CoverageWarning`` names the missing ones."""
    zs = sorted({int(z) for z in numbers})
    missing = [ELEMENTS[z] for z in zs if not featurizer.covered(z)]
    out = {"task_elements": len(zs), "present": len(zs) - len(missing), "missing": missing}
    if zs and len(missing) == len(zs):
        raise FeaturizerError(
            f"featurizer {featurizer.name!r} covers none of the {len(zs)} elements of task {task!r} "
            f"({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}): every atom would get an untrained "
            "fallback row. Pick a table that covers them (see `bench list featurizers`)."
        )
    if missing and announce:
        warnings.warn(
            f"featurizer {featurizer.name!r}: {len(missing)} of the {len(zs)} elements of task {task!r} are not in "
            f"the table ({', '.join(missing[:12])}{', ...' if len(missing) > 12 else ''}); each gets a trainable "
            "fallback row",
            CoverageWarning,
            stacklevel=2,
        )
    return out


class OneHot(Featurizer):
    def __init__(self, name: str = "onehot") -> None:
        super().__init__(name, MAX_Z)

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        self._check(Z)
        return nn.functional.one_hot(Z.long() - 1, MAX_Z).float()


class Learned(Featurizer):
    def __init__(self, dim: int, name: str = "learned") -> None:
        super().__init__(name, dim)
        self.embedding = nn.Embedding(MAX_Z + 1, dim)

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        self._check(Z)
        return self.embedding(Z.long())


class TableFeaturizer(Featurizer):
    """A per-element table. ``trainable=False``: the table is a buffer and only the fallback rows of missing
    elements train; ``trainable=True``: the whole table is a parameter initialised from the file."""

    def __init__(self, name: str, vectors: dict[str, np.ndarray], *, trainable: bool, hash_: str | None = None,
                 policy: dict | None = None) -> None:
        dim = len(next(iter(vectors.values())))
        super().__init__(name, dim)
        self.trainable = trainable
        self.table_hash = hash_ or table_hash(vectors)
        self.policy = policy
        present = [z for z in range(1, MAX_Z + 1) if ELEMENTS[z] in vectors]
        missing = [z for z in range(1, MAX_Z + 1) if ELEMENTS[z] not in vectors]
        self.coverage = {"present": len(present), "missing": [ELEMENTS[z] for z in missing]}
        mat = np.zeros((MAX_Z + 1, dim), dtype=np.float32)
        for z in present:
            mat[z] = vectors[ELEMENTS[z]]
        # Fallback rows start at the table's own scale so they are neither dominant nor silent. There is one for
        # every missing Z (not only the task's): the count and order of these draws are part of existing run ids.
        scale = float(np.std(mat[present])) if present else 1.0
        table = torch.from_numpy(mat)
        if trainable:
            fill = torch.randn(len(missing), dim) * scale
            table[missing] = fill
            self.weight = nn.Parameter(table)
        else:
            self.register_buffer("table", table)
            # row index into cat([table, fallback]): present Z -> Z, missing Z -> MAX_Z + 1 + k
            row = torch.arange(MAX_Z + 1)
            for k, z in enumerate(missing):
                row[z] = MAX_Z + 1 + k
            self.register_buffer("row", row)
            self.fallback = nn.Parameter(torch.randn(len(missing), dim) * scale) if missing else None

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        self._check(Z)
        Z = Z.long()
        if self.trainable:
            return self.weight[Z]
        if self.fallback is None:
            return self.table[Z]
        return torch.cat([self.table, self.fallback])[self.row[Z]]


# ---- registry --------------------------------------------------------------------------------------------
Factory = Callable[[str | None, int | None, str], Featurizer]


def _no_arg(name: str, arg: str | None) -> None:
    if arg is not None:
        raise FeaturizerError(f"featurizer {name!r} takes no ':' argument (got {name}:{arg})")


def _fixed_dim(name: str, dim: int | None, actual: int) -> None:
    if dim is not None and dim != actual:
        raise FeaturizerError(f"featurizer {name!r} has width {actual}; a width of {dim} was asked for")


def _onehot(arg, dim, spec):
    """One-hot of Z over 1..118 (118 columns)."""
    _no_arg("onehot", arg)
    _fixed_dim("onehot", dim, MAX_Z)
    return OneHot(spec)


def cgcnn_vectors() -> dict[str, np.ndarray]:
    import jarvis

    path = Path(jarvis.__file__).resolve().parent / "core" / "atom_init.json"
    raw = json.loads(path.read_text())
    return {ELEMENTS[int(z)]: np.asarray(v, dtype=np.float64) for z, v in raw.items()}


def _cgcnn(arg, dim, spec):
    """The 92 CGCNN bits (jarvis-tools atom_init.json, Z = 1..100), frozen."""
    _no_arg("cgcnn", arg)
    vecs = cgcnn_vectors()
    _fixed_dim("cgcnn", dim, len(next(iter(vecs.values()))))
    return TableFeaturizer(spec, vecs, trainable=False)


def _learned(arg, dim, spec):
    """A trainable element table (nn.Embedding), width from the encoder's reference."""
    _no_arg("learned", arg)
    return Learned(dim or DEFAULT_LEARNED_DIM, spec)


def random_vectors(dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-element unit vectors; element Z's vector depends only on (seed, Z, dim), on every machine."""
    return {ELEMENTS[z]: row.copy() for z, row in enumerate(_unit_rows(dim, seed), start=1)}


@functools.lru_cache(maxsize=8)
def _unit_rows(dim: int, seed: int) -> tuple[np.ndarray, ...]:
    rows = []
    for z in range(1, MAX_Z + 1):
        v = np.random.default_rng([seed, z]).standard_normal(dim)
        rows.append(v / np.sqrt(_sum_of_squares(v)))
    return tuple(rows)


def _fma(a: float, b: float, c: float) -> float:
    return float(Fraction(a) * Fraction(b) + Fraction(c))  # exact, then one rounding: a fused multiply-add


def _sum_of_squares(v: np.ndarray) -> float:
    """``v @ v`` exactly as OpenBLAS's AVX2 ddot kernel computes it (16 FMA lanes over blocks of 16, a fixed
    pairwise reduction of the lanes, then a plain loop over the tail), whatever the CPU. np.linalg.norm's last
    bit depends on the kernel OpenBLAS picks (AVX2 vs AVX-512), which made the random control's table hash, and
    so its run ids, differ between machines; this is the AVX2 result the committed records were made with."""
    x = [float(t) for t in v]
    n1 = len(x) & -16
    lanes = [0.0] * 16
    for i in range(0, n1, 16):
        for k in range(16):
            lanes[k] = _fma(x[i + k], x[i + k], lanes[k])
    total = 0.0
    if n1:
        pairs = [(lanes[4 * j] + lanes[4 * j + 2], lanes[4 * j + 1] + lanes[4 * j + 3]) for j in range(4)]
        a = (pairs[0][0] + pairs[1][0], pairs[0][1] + pairs[1][1])
        b = (pairs[2][0] + pairs[3][0], pairs[2][1] + pairs[3][1])
        total = (a[0] + b[0]) + (a[1] + b[1])
    for t in x[n1:]:
        total += t * t
    return total


def parse_random(arg: str | None, spec: str) -> tuple[int, int | None]:
    """(seed, width or None) of a ``random[:SEED[:WIDTH]]`` spec; ``arg`` is what follows ``random:``."""
    parts = arg.split(":") if arg is not None else []
    try:
        if len(parts) > 2:
            raise ValueError
        seed = int(parts[0]) if parts else 0
        width = int(parts[1]) if len(parts) == 2 else None
    except ValueError:
        raise FeaturizerError(
            f"featurizer 'random': expected random[:SEED[:WIDTH]] with integers, got {spec!r}"
        ) from None
    if width is not None and width < 1:
        raise FeaturizerError(f"featurizer {spec!r}: width must be a positive integer")
    return seed, width


def _random(arg, dim, spec):
    """Seeded random unit vector per element (a control), frozen; random[:SEED[:WIDTH]], default width 200."""
    seed, width = parse_random(arg, spec)
    if width is not None and dim is not None and width != dim:
        raise FeaturizerError(f"featurizer {spec!r} is {width}-d but {dim}-d was asked for")
    return TableFeaturizer(spec, random_vectors(width or dim or DEFAULT_RANDOM_DIM, seed), trainable=False)


def _table(path: str | None, dim: int | None, spec: str, trainable: bool, kind: str) -> Featurizer:
    if not path:
        raise FeaturizerError(f"featurizer {kind!r} needs a table: {kind}:<path.json>")
    t = load_table(path)
    _fixed_dim(spec, dim, t.dim)
    return TableFeaturizer(spec, t.vectors, trainable=trainable, hash_=t.hash)


def _crysatom(arg, dim, spec):
    """The published CrysAtom 200-d table (Mukherjee et al., LoG 2024), frozen."""
    _no_arg("crysatom-published", arg)
    return _table(str(CRYSATOM_PUBLISHED), dim, spec, False, "crysatom-published")


def _published(arg, dim, spec):
    """A published element embedding from the elementembeddings package: published:<name>, frozen."""
    from bench import published

    t = published.load(published.entry(arg).name)
    _fixed_dim(spec, dim, t.dim)
    return TableFeaturizer(spec, t.vectors, trainable=False, hash_=t.hash, policy=t.meta["policy"])


def _embedding(arg, dim, spec):
    """A frozen per-element table from a JSON file: embedding:<path.json>."""
    return _table(arg, dim, spec, False, "embedding")


def _embedding_init(arg, dim, spec):
    """A trainable table initialised from a JSON file: embedding-init:<path.json>."""
    return _table(arg, dim, spec, True, "embedding-init")


for _name, _fn in [
    ("onehot", _onehot),
    ("cgcnn", _cgcnn),
    ("learned", _learned),
    ("random", _random),
    ("crysatom-published", _crysatom),
    ("published", _published),
    ("embedding", _embedding),
    ("embedding-init", _embedding_init),
]:
    FEATURIZERS.add(_name, _fn, description=(_fn.__doc__ or "").strip().split("\n")[0])


# ---- listing (`bench list featurizers`): width, coverage, paper, origin and licence of each -----------------


def _table_row(vectors: dict, **info: Any) -> dict:
    from bench.published import missing_z_le_94

    return {"width": len(next(iter(vectors.values()))), "elements": len(vectors),
            "missing_z_le_94": missing_z_le_94(vectors), **info}


def _describe_onehot() -> dict:
    return {"width": MAX_Z, "elements": MAX_Z, "missing_z_le_94": [], "paper": None,
            "origin": "built in (column Z-1)", "licence": "MIT (crysbench)", "frozen": True}


def _describe_cgcnn() -> dict:
    return _table_row(cgcnn_vectors(), paper="Xie & Grossman, Phys. Rev. Lett. 120, 145301 (2018)",
                      origin="jarvis-tools jarvis/core/atom_init.json", licence="MIT (jarvis-tools)", frozen=True)


def _describe_crysatom() -> dict:
    return _table_row(load_table(CRYSATOM_PUBLISHED).vectors,
                      paper="Mukherjee et al., CrysAtom, Learning on Graphs (LoG) 2024",
                      origin="shrimonmuke0202/CrysAtom@e97e77a dense_vector/CrysAtom_vector.pkl, converted to "
                             "JSON (bench/data/crysatom_200d.json)",
                      licence="GPL-3.0 (CrysAtom repository; bench/data/CRYSATOM_NOTICE.md)", frozen=True)


def _describe_learned() -> dict:
    return {"width": "encoder's", "elements": MAX_Z, "missing_z_le_94": [],
            "paper": None, "origin": "trained from scratch", "licence": "MIT (crysbench)", "frozen": False}


def _describe_random() -> dict:
    return {"width": f"{DEFAULT_RANDOM_DIM} or :WIDTH", "elements": MAX_Z, "missing_z_le_94": [],
            "paper": None, "origin": "seeded unit vectors (a control)", "licence": "MIT (crysbench)", "frozen": True}


def _describe_file(frozen: bool) -> Callable[[], dict]:
    return lambda: {"width": "file's", "elements": "file's", "missing_z_le_94": "file's", "paper": None,
                    "origin": "your JSON table", "licence": None, "frozen": frozen}


def _published_variants() -> list[dict]:
    from bench.published import CATALOGUE, describe, package_version

    installed = package_version()
    return [{**describe(t), "package_installed": installed} for t in CATALOGUE.values()]


_onehot.describe = _describe_onehot  # type: ignore[attr-defined]
_cgcnn.describe = _describe_cgcnn  # type: ignore[attr-defined]
_crysatom.describe = _describe_crysatom  # type: ignore[attr-defined]
_learned.describe = _describe_learned  # type: ignore[attr-defined]
_random.describe = _describe_random  # type: ignore[attr-defined]
_embedding.describe = _describe_file(True)  # type: ignore[attr-defined]
_embedding_init.describe = _describe_file(False)  # type: ignore[attr-defined]
# one listing row per table (published:magpie, published:mat2vec, ...) instead of one for the family
_published.variants = _published_variants  # type: ignore[attr-defined]


def build_featurizer(spec: str, *, dim: int | None = None) -> Featurizer:
    """``spec`` is ``name`` or ``name:argument`` (a table path, or the seed of ``random``)."""
    if not isinstance(spec, str) or not spec:
        raise FeaturizerError(f"featurizer spec must be a non-empty string, got {spec!r}")
    name, sep, arg = spec.partition(":")
    factory = FEATURIZERS.get(name)  # unknown name -> RegistryError with did-you-mean
    if dim is not None and (not isinstance(dim, int) or dim < 1):
        raise FeaturizerError(f"featurizer {spec!r}: dim must be a positive integer, got {dim!r}")
    return factory(arg if sep else None, dim, spec)


__all__ = [
    "Featurizer",
    "FeaturizerError",
    "OneHot",
    "Learned",
    "TableFeaturizer",
    "TableError",
    "RegistryError",
    "CoverageWarning",
    "build_featurizer",
    "task_coverage",
    "parse_random",
    "random_vectors",
    "DEFAULT_LEARNED_DIM",
    "DEFAULT_RANDOM_DIM",
]

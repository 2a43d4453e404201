"""Per-element embedding tables as JSON: load (never pickle), save atomically with metadata, hash.

File format (either form is accepted on load; ``save_table`` writes the second)::

    {"H": [0.1, ...], "He": [...], ...}
    {"meta": {...free-form provenance...}, "table": {"H": [...], ...}}

Keys are element symbols (H..Og); every vector has the same width; values are finite numbers. Bad files raise
``TableError`` naming the file and the offending entry.

The hash (``table_hash``) is the sha256 of the canonical JSON of the vectors only (sorted symbols, float64
values written with ``repr`` precision, no whitespace), so the same numbers give the same hash whatever the
metadata or key order, and a float32 table survives a save/load round trip with its hash unchanged.

The shipped ``bench/data/crysatom_200d.json`` holds the CrysAtom element vectors (Mukherjee et al., "CrysAtom:
Distributed Representation of Atoms for Crystal Property Prediction", LoG 2024; repository
shrimonmuke0202/CrysAtom, GPL-3.0, commit e97e77a, ``dense_vector/CrysAtom_vector.pkl`` converted to JSON
offline). The numbers are CrysAtom's output, redistributed with attribution; cite their paper when you use them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bench.cli import UserError
from bench.paths import atomic_path
from bench.registry import suggest
from bench.structures import ELEMENTS, Z_OF

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
CRYSATOM_PUBLISHED = PACKAGE_DATA / "crysatom_200d.json"


class TableError(UserError, ValueError):
    """A malformed embedding table; the message names the file and the entry."""


@dataclass(frozen=True)
class Table:
    vectors: dict[str, np.ndarray]  # symbol -> float64 (dim,), exactly the file's numbers (so the hash matches)
    meta: dict[str, Any] = field(default_factory=dict)
    hash: str = ""

    @property
    def dim(self) -> int:
        return len(next(iter(self.vectors.values())))

    @property
    def symbols(self) -> list[str]:
        return sorted(self.vectors, key=lambda s: Z_OF[s])


def canonical_vectors(vectors: Mapping[str, Any]) -> str:
    """Canonical JSON text of a table's vectors (what ``table_hash`` hashes)."""
    body = {s: [float(x) for x in np.asarray(v, dtype=np.float64).ravel()] for s, v in vectors.items()}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)


def table_hash(vectors: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_vectors(vectors).encode()).hexdigest()


def _validate(raw: Any, where: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if not isinstance(raw, dict):
        raise TableError(f"{where}: an embedding table must be a JSON mapping {{symbol: [floats]}}, got {type(raw).__name__}")
    meta: dict[str, Any] = {}
    if "table" in raw and ("meta" in raw or len(raw) == 1):
        extra = set(raw) - {"table", "meta"}
        if extra:
            raise TableError(f"{where}: unexpected top-level keys {sorted(extra)} (expected 'meta' and 'table')")
        meta = raw.get("meta") or {}
        if not isinstance(meta, dict):
            raise TableError(f"{where}: 'meta' must be a mapping, got {type(meta).__name__}")
        raw = raw["table"]
        if not isinstance(raw, dict):
            raise TableError(f"{where}: 'table' must be a mapping {{symbol: [floats]}}, got {type(raw).__name__}")
    if not raw:
        raise TableError(f"{where}: the table is empty")
    vectors: dict[str, np.ndarray] = {}
    width = None
    for sym, vec in raw.items():
        if sym not in Z_OF:
            raise TableError(f"{where}: unknown element symbol {sym!r}: " + suggest(str(sym), list(Z_OF), "element"))
        if not isinstance(vec, (list, tuple)) or not vec:
            raise TableError(f"{where}: entry {sym!r} must be a non-empty list of numbers")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vec):
            raise TableError(f"{where}: entry {sym!r} holds a non-number")
        if not all(math.isfinite(x) for x in vec):
            raise TableError(f"{where}: entry {sym!r} holds NaN or inf")
        if width is None:
            width, first = len(vec), sym
        elif len(vec) != width:
            raise TableError(f"{where}: ragged table: {sym!r} has {len(vec)} values but {first!r} has {width}")
        vectors[sym] = np.asarray(vec, dtype=np.float64)
    return vectors, meta


def load_table(path: str | Path) -> Table:
    """Read and validate a table JSON file (never a pickle)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"embedding table {str(path)!r} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a BOM some editors write is fine
    except UnicodeDecodeError as e:
        raise TableError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); tables are JSON files "
                         "{symbol: [floats]}, never pickles") from None
    except json.JSONDecodeError as e:
        raise TableError(f"{path}: not valid JSON ({e}); tables are JSON files {{symbol: [floats]}}") from None
    vectors, meta = _validate(raw, str(path))
    h = table_hash(vectors)
    return Table(vectors, meta, h)


def save_table(path: str | Path, vectors: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> str:
    """Write ``{"meta", "table"}`` JSON atomically; returns the table hash (also stored in meta)."""
    body = {s: [float(x) for x in np.asarray(v, dtype=np.float64).ravel()] for s, v in vectors.items()}
    _validate(body, str(path))
    h = table_hash(body)
    meta = dict(meta or {})
    meta["hash"] = h
    ordered = {s: body[s] for s in sorted(body, key=lambda s: Z_OF[s])}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"meta": meta, "table": ordered}, allow_nan=False))
    return h


def symbol_of(z: int) -> str:
    return ELEMENTS[z]

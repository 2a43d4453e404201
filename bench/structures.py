"""One crystal structure type and the readers that produce it (jarvis-tools dicts, CIF, POSCAR).

Every encoder and graph builder consumes ``Structure``; readers turn malformed input into a
``StructureError`` naming the entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Z = 1..118; index 0 is unused (reserved as a mask token by some objectives).
ELEMENTS: tuple[str, ...] = (
    "X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar", "K",
    "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb",
    "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe", "Cs",
    "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta",
    "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa",
    "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db", "Sg", "Bh", "Hs", "Mt",
    "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og",
)
MAX_Z = len(ELEMENTS) - 1  # 118
Z_OF: dict[str, int] = {s: z for z, s in enumerate(ELEMENTS) if z > 0}


class StructureError(ValueError):
    """A structure that cannot be used; the message names the entry."""


def atomic_number(symbol: str, entry: str = "?") -> int:
    s = str(symbol).strip()
    z = Z_OF.get(s) or Z_OF.get(s.capitalize())
    if z is None:
        import difflib

        close = difflib.get_close_matches(s, list(Z_OF), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise StructureError(f"entry {entry}: unknown element {symbol!r}.{hint}")
    return z


@dataclass(frozen=True, eq=False)
class Structure:
    """A periodic crystal. ``lattice`` rows are the a, b, c vectors (Å); ``frac`` fractional coordinates."""

    lattice: np.ndarray  # (3, 3) float64
    frac: np.ndarray  # (N, 3) float64
    numbers: np.ndarray  # (N,) int64 atomic numbers
    id: str = "?"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        lat = np.asarray(self.lattice, dtype=np.float64)
        frac = np.asarray(self.frac, dtype=np.float64)
        nums = np.asarray(self.numbers, dtype=np.int64)
        if lat.shape != (3, 3):
            raise StructureError(f"entry {self.id}: lattice must be 3x3, got shape {lat.shape}")
        if frac.ndim != 2 or frac.shape[1] != 3 or len(frac) == 0:
            raise StructureError(f"entry {self.id}: coordinates must be (N>0, 3), got shape {frac.shape}")
        if nums.shape != (len(frac),):
            raise StructureError(f"entry {self.id}: {len(nums)} elements for {len(frac)} sites")
        if not (np.isfinite(lat).all() and np.isfinite(frac).all()):
            raise StructureError(f"entry {self.id}: non-finite lattice or coordinates")
        vol = float(np.linalg.det(lat))
        if abs(vol) < 1e-6:
            raise StructureError(f"entry {self.id}: degenerate lattice (volume {vol:.3g} Å^3)")
        if nums.min() < 1 or nums.max() > MAX_Z:
            raise StructureError(f"entry {self.id}: atomic numbers outside 1..{MAX_Z}")
        object.__setattr__(self, "lattice", lat)
        object.__setattr__(self, "frac", frac)
        object.__setattr__(self, "numbers", nums)

    @property
    def num_atoms(self) -> int:
        return len(self.numbers)

    @property
    def cart(self) -> np.ndarray:
        return self.frac @ self.lattice

    @property
    def volume(self) -> float:
        return abs(float(np.linalg.det(self.lattice)))

    @property
    def symbols(self) -> list[str]:
        return [ELEMENTS[z] for z in self.numbers]

    # ---- readers -------------------------------------------------------------------------------------
    @classmethod
    def from_jarvis(cls, atoms: dict, entry: str = "?") -> "Structure":
        """From a jarvis-tools ``Atoms.to_dict()`` mapping (``lattice_mat``, ``coords``, ``elements``)."""
        try:
            lat = np.asarray(atoms["lattice_mat"], dtype=np.float64)
            coords = np.asarray(atoms["coords"], dtype=np.float64)
            elements = atoms["elements"]
            cartesian = bool(atoms.get("cartesian", False))
        except (KeyError, TypeError, ValueError) as e:
            raise StructureError(f"entry {entry}: malformed atoms record ({type(e).__name__}: {e})") from None
        if coords.ndim != 2 or coords.shape[-1:] != (3,):
            raise StructureError(f"entry {entry}: coordinates must be (N, 3), got shape {coords.shape}")
        nums = [atomic_number(e, entry) for e in elements]
        if cartesian:
            coords = coords @ np.linalg.inv(lat)
        return cls(lat, coords, np.asarray(nums), id=str(entry))

    @classmethod
    def from_cif(cls, text: str, entry: str = "?") -> "Structure":
        """From CIF text, via pymatgen (first structure of the file). Unknown elements and truncation that pymatgen
        tolerates (a file cut at a line boundary parses with fewer sites) are errors naming the entry. When
        pymatgen finds no structure, the error gives the real cause (overlapping sites, a non-finite number, a
        zero-volume cell), taken from the file and from pymatgen's warnings, not only "no structures"."""
        import re
        import warnings

        from pymatgen.core.periodic_table import DummySpecies
        from pymatgen.io.cif import CifParser

        if not text.strip():
            raise StructureError(f"entry {entry}: empty CIF (the file holds no text)")
        structs, failure = [], None
        # pymatgen reports why a block gave no structure only as warnings: keep them for the message
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                structs = CifParser.from_str(text).parse_structures(primitive=False)
            except Exception as e:  # pymatgen raises many types on bad input
                failure = f"{type(e).__name__}: {e}"
        if failure is not None or not structs:
            raise StructureError(f"entry {entry}: {cif_failure_reason(text, caught, failure)}")
        s = structs[0]
        for site in s:
            for sp in site.species:
                if isinstance(sp, DummySpecies):
                    raise StructureError(f"entry {entry}: unknown element {sp.symbol!r} (site {site.label})")
        m = re.search(r"_chemical_formula_sum\s+'?\"?([^'\"\n]+)", text)
        if m:
            declared = set(re.findall(r"([A-Z][a-z]?)", m.group(1)))
            lost = declared - {sp.symbol for sp in s.composition.elements}
            if lost:
                raise StructureError(
                    f"entry {entry}: CIF declares {sorted(lost)} in _chemical_formula_sum but no atom site holds "
                    "them (truncated file?)"
                )
        return cls.from_pymatgen(s, entry)

    @classmethod
    def from_pymatgen(cls, s, entry: str = "?") -> "Structure":
        nums = []
        for site in s:
            if not site.is_ordered:
                raise StructureError(f"entry {entry}: disordered site {site.species} is not supported")
            nums.append(site.specie.Z)
        labels = [str(site.label) if getattr(site, "label", None) else "" for site in s]
        return cls(s.lattice.matrix, s.frac_coords, np.asarray(nums), id=str(entry), meta={"labels": labels})

    @classmethod
    def from_poscar(cls, text: str, entry: str = "?") -> "Structure":
        from jarvis.io.vasp.inputs import Poscar

        try:
            atoms = Poscar.from_string(text).atoms
        except Exception as e:
            raise StructureError(f"entry {entry}: cannot parse POSCAR ({type(e).__name__}: {e})") from None
        return cls.from_jarvis(atoms.to_dict(), entry)

    def to_jarvis(self) -> dict:
        return {
            "lattice_mat": self.lattice.tolist(),
            "coords": self.frac.tolist(),
            "elements": self.symbols,
            "cartesian": False,
        }


# ---- physical sanity --------------------------------------------------------------------------------------

# Å. The shortest real interatomic distance is the H2 bond (0.74 Å); anything below this is a duplicated or
# overlapping site (or a unit error), and graph builders would silently treat it as a strong bond.
MIN_DISTANCE = 0.5


def closest_pair(s: Structure, cutoff: float = MIN_DISTANCE) -> tuple[int, int, float] | None:
    """The closest two atoms (i <= j, 0-based; i == j: an atom and its own periodic image) if they are closer
    than ``cutoff`` Å, periodic images included; else None."""
    frac = s.frac - np.floor(s.frac)
    inv = np.linalg.inv(s.lattice)
    # A vector shorter than cutoff has |fractional component a| <= cutoff * |column a of inv|; with differences
    # wrapped to [-0.5, 0.5] these images cover every such pair (also in strongly skewed cells).
    reach = np.floor(0.5 + cutoff * np.linalg.norm(inv, axis=0)).astype(int)
    grids = np.meshgrid(*(np.arange(-m, m + 1) for m in reach), indexing="ij")
    images = np.stack([g.ravel() for g in grids], axis=1).astype(np.float64)  # (M, 3)
    n, zero = len(frac), np.all(images == 0, axis=1)
    best: tuple[int, int, float] | None = None
    step = max(1, 2_000_000 // (n * len(images)))  # rows per block: a few tens of MB at most
    for lo in range(0, n, step):
        rows = np.arange(lo, min(n, lo + step))
        diff = frac[None, :, :] - frac[rows, None, :]
        diff -= np.round(diff)
        d = np.linalg.norm((diff[:, :, None, :] + images[None, None]) @ s.lattice, axis=-1)  # (rows, N, M)
        d[np.arange(len(rows)), rows] = np.where(zero, np.inf, d[np.arange(len(rows)), rows])  # not an atom and itself
        k = np.unravel_index(int(np.argmin(d)), d.shape)
        if d[k] < cutoff and (best is None or d[k] < best[2]):
            i, j = int(rows[k[0]]), int(k[1])
            best = (min(i, j), max(i, j), float(d[k]))
    return best


def check_distances(s: Structure, minimum: float = MIN_DISTANCE) -> None:
    """Refuse atoms closer than ``minimum`` Å (periodic images included), naming the entry, the atoms and the
    distance."""
    pair = closest_pair(s, minimum)
    if pair is None:
        return
    i, j, d = pair
    labels = list(s.meta.get("labels") or [])

    def atom(k: int) -> str:
        label = labels[k] if k < len(labels) and labels[k] else ""
        return f"atom {k + 1} ({ELEMENTS[s.numbers[k]]}{', site ' + label if label else ''})"

    what = (f"{atom(i)} is {d:.3g} Å from its own periodic image (a lattice vector that short)" if i == j
            else f"{atom(i)} and {atom(j)} are {d:.3g} Å apart (periodic images included)")
    raise StructureError(f"entry {s.id}: {what}; closer than {minimum} Å is physically impossible "
                         "(duplicated or overlapping sites, or coordinates in the wrong unit?)")


# ---- why a CIF gave no structure ----------------------------------------------------------------------------

# pymatgen's own words (from its warnings or exception) -> what they mean for the user's file
_PYMATGEN_CAUSES = (
    ("exceeded tolerance", "atom sites overlap: the occupancies at one position sum to more than 1 "
                           "(duplicated or overlapping atoms)"),
    ("sum to > 1", "atom sites overlap: the occupancies at one position sum to more than 1 "
                   "(duplicated or overlapping atoms)"),
    ("singular matrix", "zero-volume cell (the lattice vectors are not independent)"),
    ("float nan", "a non-finite (NaN) number in the cell or the atom coordinates"),
)
_CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")


def _cif_number(value) -> float | None:
    """A CIF numeric value ('1.234(5)' allowed); None when absent or not a number."""
    if value is None or isinstance(value, list):
        return None
    text = str(value).strip()
    if text in ("", "?", "."):
        return None
    try:
        return float(text.split("(")[0])
    except ValueError:
        return None


def _cif_file_problems(text: str) -> list[str]:
    """Problems read directly from the CIF's data blocks: no block, a missing, non-finite or zero cell
    parameter, a zero-volume cell, sites with non-finite coordinates."""
    from pymatgen.io.cif import CifFile

    try:
        blocks = list(CifFile.from_str(text).data.values())
    except Exception:
        return []  # pymatgen's exception says more than we could here
    if not blocks:
        return ["no data_ block found (not a CIF file?)"]
    d = next((b.data for b in blocks if "_atom_site_fract_x" in b.data or "_cell_length_a" in b.data),
             blocks[0].data)
    out: list[str] = []
    cell = {k: _cif_number(d.get(k)) for k in _CELL_KEYS}
    for k, v in cell.items():
        raw = d.get(k)
        if raw is None:
            out.append(f"{k} is missing")
        elif v is None or not np.isfinite(v):
            out.append(f"{k} is {raw!r}, not a finite number")
        elif k.startswith("_cell_length") and v <= 0:
            out.append(f"{k} is {raw} (zero-volume cell)")
    if not out:
        a, b, c = (cell[k] for k in _CELL_KEYS[:3])
        ca, cb, cg = (np.cos(np.radians(cell[k])) for k in _CELL_KEYS[3:])
        v2 = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
        if v2 <= 1e-12:
            out.append(f"the cell angles {cell['_cell_angle_alpha']:g}, {cell['_cell_angle_beta']:g}, "
                       f"{cell['_cell_angle_gamma']:g} give a zero-volume cell")
    xs = [d.get(f"_atom_site_fract_{c}") or [] for c in "xyz"]
    labels = d.get("_atom_site_label") or d.get("_atom_site_type_symbol") or []
    bad_sites = []
    for k, xyz in enumerate(zip(*xs)):
        if isinstance(xyz[0], str) and any(v is None or not np.isfinite(v) for v in map(_cif_number, xyz)):
            bad_sites.append(f"{labels[k] if k < len(labels) else f'site {k + 1}'} {' '.join(xyz)}")
    if bad_sites:
        more = f" and {len(bad_sites) - 3} more" if len(bad_sites) > 3 else ""
        out.append(f"non-finite fractional coordinates at {'; '.join(bad_sites[:3])}{more}")
    return out


def cif_failure_reason(text: str, caught: list, failure: str | None) -> str:
    """Why pymatgen gave no structure for ``text``: the file's own problems, else the causes pymatgen gave in its
    warnings (``caught``, from ``warnings.catch_warnings(record=True)``) or its exception, in plain words, with
    pymatgen's message kept in brackets."""
    import re

    said: list[str] = []
    for w in caught:
        for line in str(w.message).splitlines():
            line = line.strip()
            if line.startswith("Issues encountered while parsing CIF:"):
                line = line.split(":", 1)[1].strip()
            line = re.split(r"(?<=[.!])\s", line, maxsplit=1)[0]  # pymatgen's first sentence says it
            if line and not line.startswith("No structure parsed for section") and line not in said:
                said.append(line)
    causes = _cif_file_problems(text)
    if not causes:
        low = "; ".join(said).lower()
        causes = list(dict.fromkeys(c for key, c in _PYMATGEN_CAUSES if key in low))
    generic = bool(failure and failure.endswith("Invalid CIF file with no structures!"))
    if failure and not (generic and (said or causes)):  # the generic one adds nothing to a real cause
        said.append(failure)
    raw = "; ".join(said)
    if not causes:
        return f"cannot parse CIF, malformed or truncated ({raw or 'no structure in the file'})"
    return f"cannot parse CIF: {'; '.join(causes)}" + (f" [pymatgen: {raw}]" if raw else "")

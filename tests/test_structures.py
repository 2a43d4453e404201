"""Structure readers turn bad input into errors naming the entry."""

import json

import numpy as np
import pytest

from bench.structures import Structure, StructureError, atomic_number

NACL = {
    "lattice_mat": [[0.0, 2.82, 2.82], [2.82, 0.0, 2.82], [2.82, 2.82, 0.0]],
    "coords": [[0, 0, 0], [0.5, 0.5, 0.5]],
    "elements": ["Na", "Cl"],
    "cartesian": False,
}

CIF = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 Na 0 0 0
Cl1 Cl 0.5 0.5 0.5
"""


def test_from_jarvis_and_properties():
    s = Structure.from_jarvis(NACL, "nacl")
    assert s.symbols == ["Na", "Cl"] and s.num_atoms == 2
    assert s.volume == pytest.approx(2 * 2.82**3)
    assert np.allclose(s.cart[1], [2.82, 2.82, 2.82])


def test_cartesian_input_is_converted():
    d = dict(NACL, cartesian=True, coords=[[0, 0, 0], [2.82, 2.82, 2.82]])
    assert np.allclose(Structure.from_jarvis(d).frac[1], [0.5, 0.5, 0.5])


def test_cif_round_trip_and_truncated_cif():
    s = Structure.from_cif(CIF, "nacl.cif")
    assert sorted(s.symbols) == ["Cl", "Na"]
    with pytest.raises(StructureError, match="entry broken.cif"):
        Structure.from_cif(CIF[:120], "broken.cif")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(elements=["Na", "Xx"]), "unknown element 'Xx'"),
        (lambda d: d.update(coords=[[0, 0, float("nan")], [0.5, 0.5, 0.5]]), "non-finite"),
        (lambda d: d.update(lattice_mat=[[1, 0, 0], [2, 0, 0], [0, 0, 1]]), "degenerate lattice"),
        (lambda d: d.update(elements=["Na"]), "1 elements for 2 sites"),
        (lambda d: d.pop("lattice_mat"), "malformed atoms record"),
    ],
)
def test_bad_entries_name_the_entry(mutate, match):
    d = {k: (list(v) if isinstance(v, list) else v) for k, v in NACL.items()}
    mutate(d)
    with pytest.raises(StructureError, match=match) as e:
        Structure.from_jarvis(d, "JVASP-42")
    assert "JVASP-42" in str(e.value)


def test_typo_element_suggestion():
    with pytest.raises(StructureError, match="Did you mean 'Cl'"):
        atomic_number("Cll", "row 3")


# ---- why a CIF fails, and impossible distances (CIFs derived from the real SrTiO3 of tests/fixtures) -------


def _fixture_structure(jid: str) -> Structure:
    from conftest import FIXTURES

    entries = json.loads((FIXTURES / "structures.json").read_text())["entries"]
    e = next(e for e in entries if e["jid"] == jid)
    return Structure.from_jarvis(e["atoms"], jid)


def _srtio3_cif() -> tuple[str, list[str]]:
    from pymatgen.core import Structure as PS
    from pymatgen.io.cif import CifWriter

    s = _fixture_structure("JVASP-8082")
    text = str(CifWriter(PS(s.lattice, s.symbols, s.frac)))
    return text, text.rstrip("\n").splitlines()[-1].split()  # the last site row: Ti Ti4 1 x y z occ


def _site(*cols: str) -> str:
    return "  " + "  ".join(cols) + "\n"


@pytest.mark.parametrize("case, cause", [
    ("duplicated site", r"atom sites overlap.*occupancies.*Occupancy 2\.0 exceeded tolerance"),
    ("nan coordinate", r"non-finite fractional coordinates at Ti4 nan"),
    ("zero cell length", r"_cell_length_a is 0\.0 \(zero-volume cell\)"),
    ("flat cell", r"cell angles 90, 90, 0 give a zero-volume cell"),
    ("empty file", r"empty CIF"),
    ("not a cif", r"no data_ block found \(not a CIF file\?\)"),
])
def test_cif_failure_names_the_real_cause(case, cause):
    import re

    good, ti = _srtio3_cif()
    head = good[: good.rindex(_site(*ti).lstrip())].rstrip(" ")
    text = {
        "duplicated site": good + _site("Ti", "Ti9", *ti[2:]),
        "nan coordinate": head + _site(ti[0], ti[1], ti[2], "nan", *ti[4:]),
        "zero cell length": re.sub(r"_cell_length_a\s+\S+", "_cell_length_a   0.0", good),
        "flat cell": re.sub(r"_cell_angle_gamma\s+\S+", "_cell_angle_gamma   0.0", good),
        "empty file": "\n",
        "not a cif": "id,target\nJVASP-1,0.5\n",
    }[case]
    with pytest.raises(StructureError, match=cause) as e:
        Structure.from_cif(text, "bad.cif")
    assert str(e.value).startswith("entry bad.cif: ") and "Invalid CIF file with no structures" not in str(e.value)


def test_atoms_closer_than_half_an_angstrom_are_refused():
    from bench.structures import check_distances, closest_pair

    good, ti = _srtio3_cif()
    s = Structure.from_cif(good, "ok.cif")
    check_distances(s)  # the real structure passes (its closest pair is Ti-O at 1.97 Å)
    assert closest_pair(s, 0.5) is None and closest_pair(s, 2.0)[2] == pytest.approx(3.93164 / 2, abs=1e-4)
    # a second Ti 0.007 in fractional x (0.0275 Å) from Ti4, as in an overlapping-atom file
    close = Structure.from_cif(good + _site("Ti", "Ti9", ti[2], "0.507", *ti[4:]), "close.cif")
    with pytest.raises(StructureError, match=r"entry close\.cif: atom \d \(Ti, site Ti4\) and atom \d \(Ti, site "
                                             r"Ti9\) are 0\.0275 Å apart \(periodic images included\).*0\.5 Å"):
        check_distances(close)
    # through a periodic image only: Sr at the origin and an O at x = 0.998 (0.0079 Å away across the cell face)
    wrap = Structure(s.lattice, np.vstack([s.frac, [0.998, 0, 0]]), np.append(s.numbers, 8), id="wrap")
    i, j, d = closest_pair(wrap, 0.5)
    assert {wrap.symbols[i], wrap.symbols[j]} == {"Sr", "O"} and d == pytest.approx(0.002 * 3.93164, abs=1e-6)
    with pytest.raises(StructureError, match=r"entry wrap: atom \d \(Sr\) and atom 6 \(O\) are 0\.00786 Å apart"):
        check_distances(wrap)
    # an atom and its own image: a lattice vector of 0.3 Å
    thin = Structure(np.diag([0.3, 4.0, 4.0]), [[0, 0, 0]], [29], id="thin")
    with pytest.raises(StructureError, match=r"entry thin: atom 1 \(Cu\) is 0\.3 Å from its own periodic image"):
        check_distances(thin)


def test_distance_check_accepts_every_fixture_structure():
    from conftest import FIXTURES

    from bench.structures import check_distances

    for e in json.loads((FIXTURES / "structures.json").read_text())["entries"]:
        check_distances(Structure.from_jarvis(e["atoms"], e["jid"]))  # real crystals, skewed cells included

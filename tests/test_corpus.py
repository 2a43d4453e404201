"""Pretraining corpus: sources, the leakage rule (no val/test structure of an evaluated task), limit, errors."""

from __future__ import annotations

import os

import pytest

from bench.tasks import TaskError, load_task
from bench.tasks.corpus import BUILTIN_TASKS, load_corpus
from bench.tasks.jarvis import official_lists

EF = "dft_3d_formation_energy_peratom"


def _eval_ids(task):
    lists = official_lists(task)
    return set(lists["val"]) | set(lists["test"])


def _plain(ids, prefix):
    return {i.split(":", 1)[1] for i in ids if i.startswith(prefix + ":")}


def test_sample_corpus_excludes_val_test_of_task():
    c = load_corpus(("sample",), exclude_tasks=[EF], match_structures=False)
    d = load_task(EF, "sample")
    held = {d.ids[i] for k in ("val", "test") for i in d.splits[k]}
    assert len(held) == 500
    dft = _plain(c.ids, "dft_3d_2021")
    assert not (dft & _eval_ids(EF))
    assert {d.ids[i] for i in d.splits["train"]} <= dft  # training structures stay
    assert c.info["excluded"] == 500 and c.info["size"] == len(c) == 2500 - 500 + 1000
    assert "val" in c.info["leakage_rule"] and c.info["exclude_tasks"] == [EF]
    assert len(set(c.ids)) == len(c.ids) == len(c.structures)
    assert c.info["match_structures"] is False and "structure matching" not in c.info["leakage_rule"]


def test_structure_matching_is_the_default():
    """By default the corpus also loses the copies of val/test crystals under other ids (the MP entry of a
    JARVIS test material): same reduced composition, same space group, volume per atom within 2 %."""
    from bench.tasks.corpus import _Matcher

    ids_only = load_corpus(("sample",), exclude_tasks=[EF], match_structures=False)
    c = load_corpus(("sample",), exclude_tasks=[EF])
    assert c.info["match_structures"] is True and "space group" in c.info["leakage_rule"]
    ps = c.info["per_source"]
    assert ps["megnet"]["excluded_by_structure"] > 0 and ps["dft_3d_2021"]["excluded_by_structure"] > 0
    assert len(c) == len(ids_only) - ps["megnet"]["excluded_by_structure"] - ps["dft_3d_2021"]["excluded_by_structure"]
    assert set(c.ids) < set(ids_only.ids)
    # every structure dropped by matching has a val/test twin: same composition, space group, volume within 2 %
    d = load_task(EF, "sample")
    m = _Matcher(0.02)
    for k in ("val", "test"):
        for i in d.splits[k]:
            m.add(d.structures[i])
    dropped = [s for s, i in zip(ids_only.structures, ids_only.ids) if i not in set(c.ids)]
    assert dropped and all(m.match(s) for s in dropped)


def test_structure_match_needs_the_same_space_group():
    """Rock-salt NaCl (Fm-3m) matches itself as a conventional supercell; CsCl-type NaCl (Pm-3m) at the same
    volume per atom is a polymorph, not a copy."""
    import numpy as np

    from bench.structures import Structure
    from bench.tasks.corpus import _Matcher

    a = 5.64
    rock = Structure(np.array([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]),
                     np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), np.array([11, 17]), id="rock")
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    conventional = Structure(np.eye(3) * a, np.concatenate([fcc, fcc + [0.5, 0, 0]]) % 1.0,
                             np.array([11] * 4 + [17] * 4), id="rock-conventional")
    ac = (2 * rock.volume / rock.num_atoms) ** (1 / 3)
    cscl = Structure(np.eye(3) * ac, np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), np.array([11, 17]), id="cscl")
    assert abs(cscl.volume / 2 - rock.volume / 2) < 1e-9
    m = _Matcher(0.02)
    m.add(rock)
    assert m.space_group(rock) == "Fm-3m (225)" and m.space_group(cscl) == "Pm-3m (221)"
    assert m.match(conventional) and not m.match(cscl)


def test_default_excludes_all_nine_tasks():
    c = load_corpus(("sample",))
    assert c.info["exclude_tasks"] == list(BUILTIN_TASKS)
    dft, mp = _plain(c.ids, "dft_3d_2021"), _plain(c.ids, "megnet")
    for t in BUILTIN_TASKS:
        assert not ((dft | mp) & _eval_ids(t)), t
    none = load_corpus(("sample",), exclude_tasks=[])
    assert len(none) == 3500 and none.info["excluded"] == 0 and "none" in none.info["leakage_rule"]


def test_limit_is_seeded_subset():
    a = load_corpus(("sample",), exclude_tasks=[EF], limit=300, seed=1)
    b = load_corpus(("sample",), exclude_tasks=[EF], limit=300, seed=1)
    c = load_corpus(("sample",), exclude_tasks=[EF], limit=300, seed=2)
    assert a.ids == b.ids and a.ids != c.ids and len(a) == 300 and a.key != c.key
    with pytest.raises(TaskError, match="limit"):
        load_corpus(("sample",), limit=0)


def test_unknown_source_suggests():
    with pytest.raises(TaskError, match="Did you mean 'carbon24'"):
        load_corpus(("carbon_24",))


def test_shared_corpus_all_sources(shared_data):
    c = load_corpus(data_dir=shared_data / "jarvis", exclude_tasks=[EF, "megnet_e_form"], match_structures=False)
    assert c.info["sources_missing"] == []
    ps = c.info["per_source"]
    assert ps["perov5"]["kept"] == 18928 and ps["carbon24"]["kept"] == 10153
    assert ps["dft_3d_2021"]["kept"] == 55712 - 5572 - 5572
    assert ps["megnet"]["kept"] == 36476 - 2615 - 2238
    assert not (_plain(c.ids, "dft_3d_2021") & _eval_ids(EF))
    assert not (_plain(c.ids, "megnet") & _eval_ids("megnet_e_form"))
    carbon = [s for s, i in zip(c.structures, c.ids) if i.startswith("carbon24:")]
    assert all(set(s.symbols) == {"C"} for s in carbon[:200])


def test_missing_unlabeled_source_reported(shared_data, tmp_path, capsys):
    d = tmp_path / "jarvis"
    d.mkdir()
    os.symlink(shared_data / "jarvis" / "jdft_3d-8-18-2021.json.zip", d / "jdft_3d-8-18-2021.json.zip")
    c = load_corpus(("dft_3d_2021", "perov5"), exclude_tasks=[EF], data_dir=d)
    assert c.info["sources_missing"] == ["perov5"] and "perov5" in capsys.readouterr().err
    assert c.info["sources_found"] == ["dft_3d_2021"]


def test_cli_corpus(capsys):
    from bench.cli import main

    import json

    assert main(["data", "corpus", "--sources", "sample", "--exclude-tasks", EF, "--json", "--ids-only"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size"] == 3000 and info["key"].startswith("corpus-") and info["match_structures"] is False
    assert main(["data", "corpus", "--sources", "sample", "--exclude-tasks", EF, "--json"]) == 0
    matched = json.loads(capsys.readouterr().out)
    assert matched["match_structures"] is True and matched["size"] < 3000


def test_custom_task_excluded_by_structure(tmp_path):
    """A custom task's ids mean nothing in the corpus sources: its val/test crystals are matched by structure."""
    import csv

    from pymatgen.core import Structure as PS
    from pymatgen.io.cif import CifWriter

    from bench.registry import TASKS
    from bench.tasks.custom import add_custom_task

    d = load_task(EF, "sample")
    picked = [d.structures[i] for i in d.splits["train"][:30]]
    folder = tmp_path / "c"
    folder.mkdir()
    with open(folder / "id_prop.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        for k, s in enumerate(picked):
            (folder / f"x{k}.cif").write_text(str(CifWriter(PS(s.lattice, s.symbols, s.frac))))
            w.writerow([f"x{k}", 1.0 + k])
    try:
        t = add_custom_task("corpus_custom", folder, data_dir=tmp_path / "data")
        held = [picked[int(t.ids[i][1:])].id for k in ("val", "test") for i in t.splits[k]]
        assert len(held) == 6
        c = load_corpus(("sample",), exclude_tasks=["corpus_custom"])
        dft = _plain(c.ids, "dft_3d_2021")
        assert not (dft & set(held))
        assert {s.id for s in picked} - set(held) <= dft  # the custom training crystals stay
        assert "structure matching" in c.info["leakage_rule"]
    finally:
        TASKS._remove("corpus_custom")

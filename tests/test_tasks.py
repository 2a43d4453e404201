"""Tasks: registry, official splits on the shared data, the seed-123 rule, label fractions, the bundled sample,
custom data and the data CLI."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bench.registry import TASKS, RegistryError
from bench.tasks import TaskError, label_fraction, load_task, seed123_split, subset
from bench.tasks.jarvis import official_lists

NINE = (
    "dft_3d_formation_energy_peratom", "dft_3d_optb88vdw_bandgap", "dft_3d_optb88vdw_total_energy",
    "dft_3d_mbj_bandgap", "dft_3d_ehull", "dft_3d_bulk_modulus_kv", "dft_3d_shear_modulus_gv",
    "megnet_e_form", "megnet_gappbe",
)
EF = "dft_3d_formation_energy_peratom"


def _check_splits(d):
    sets = {k: set(v.tolist()) for k, v in d.splits.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    for v in d.splits.values():
        assert v.dtype == np.int64 and (v >= 0).all() and (v < len(d.ids)).all()
    assert len(d.structures) == len(d.ids) == len(d.targets) and len(set(d.ids)) == len(d.ids)
    assert d.targets.dtype == np.float64 and np.isfinite(d.targets[np.concatenate(list(d.splits.values()))]).all()


# ---- registry -------------------------------------------------------------------------------------------


def test_nine_tasks_registered_and_described():
    for name in NINE:
        t = TASKS.get(name)
        d = t.describe()
        assert d["dataset"] == ("megnet" if name.startswith("megnet") else "dft_3d_2021")
        assert d["unit"] in ("eV", "eV/atom", "GPa") and "official" in d["split_source"]
        assert ("subset" in d) == name.startswith("megnet")
    assert TASKS.get("megnet_gappbe").target_key == "gap pbe"
    assert TASKS.get("dft_3d_bulk_modulus_kv").unit == "GPa"


def test_unknown_task_suggests():
    with pytest.raises(RegistryError, match="Did you mean 'dft_3d_formation_energy_peratom'"):
        load_task("dft_3d_formation_energy", "sample")


def test_bench_list_tasks_json(capsys):
    from bench.cli import main

    assert main(["list", "tasks", "megnet*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["megnet_e_form", "megnet_gappbe"]
    assert rows[1]["dataset"] == "megnet" and rows[1]["unit"] == "eV" and "subset" in rows[1]


# ---- split helpers --------------------------------------------------------------------------------------


def test_label_fraction_nested_seeded_and_bounds():
    train = np.arange(100, 1100, dtype=np.int64)
    for seed in (0, 1):
        a, b, c = (label_fraction(train, f, seed) for f in (0.1, 0.25, 0.5))
        assert (len(a), len(b), len(c)) == (100, 250, 500)
        assert set(a) <= set(b) <= set(c) <= set(train)
        assert np.array_equal(a, label_fraction(train, 0.1, seed))
    assert not np.array_equal(label_fraction(train, 0.5, 0), label_fraction(train, 0.5, 1))
    assert np.array_equal(label_fraction(train, 1.0, 3), train)
    assert len(label_fraction(train, 1e-6, 0)) == 1
    for bad in (0, 1.5, -0.1, float("nan"), "x"):
        with pytest.raises(TaskError, match="--fraction"):
            label_fraction(train, bad, 0)


def test_subset_nested_and_errors():
    idx = np.arange(50)
    assert set(subset(idx, 10, 0)) <= set(subset(idx, 20, 0))
    assert np.array_equal(subset(idx, 500, 0), idx)
    with pytest.raises(TaskError, match="positive integer"):
        subset(idx, 0, 0)


def test_seed123_split_sizes():
    s = seed123_split(12)
    assert [len(s[k]) for k in ("train", "val", "test")] == [9, 1, 1]
    allv = np.concatenate(list(s.values()))
    assert len(set(allv.tolist())) == 11 and set(allv.tolist()) <= set(range(12))


# ---- shared data ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_dft3d(shared_data):
    with zipfile.ZipFile(shared_data / "jarvis" / "jdft_3d-8-18-2021.json.zip") as z:
        return json.loads(z.read("jdft_3d-8-18-2021.json"))


def test_formation_energy_official_split(shared_data):
    d = load_task(EF, shared_data / "jarvis")
    _check_splits(d)
    # official 44,569/5,572/5,572; JVASP-113961 and JVASP-116461 are listed in train and test -> test only
    assert d.sizes == {"train": 44567, "val": 5572, "test": 5572}
    assert len(d) == 55711
    lists = official_lists(EF)
    for k in ("val", "test"):
        assert {d.ids[i] for i in d.splits[k]} == set(lists[k])
    tr = {d.ids[i] for i in d.splits["train"]}
    assert tr == set(lists["train"]) - {"JVASP-113961", "JVASP-116461"}
    assert "source" and "jdft_3d-8-18-2021" in d.source and d.unit == "eV/atom"
    # the official values equal ours
    with zipfile.ZipFile(shared_data / "splits" / f"{EF}.json.zip") as z:
        off = json.loads(z.read(f"{EF}.json"))
    for k in ("val", "test"):
        y = np.array([off[k][d.ids[i]] for i in d.splits[k]])
        assert np.allclose(y, d.targets[d.splits[k]], atol=1e-9)
    # same structures for the OptB88vdW gap -> same graph-cache key
    assert load_task("dft_3d_optb88vdw_bandgap", shared_data / "jarvis").dataset_key == d.dataset_key
    assert load_task("dft_3d_mbj_bandgap", shared_data / "jarvis").dataset_key != d.dataset_key


def test_megnet_subset_split(shared_data):
    d = load_task("megnet_gappbe", shared_data / "jarvis")
    _check_splits(d)
    assert d.sizes == {"train": 31623, "val": 2615, "test": 2238}
    assert "subset" in d.source


def test_seed123_rule_reproduces_official_formation_energy(raw_dft3d):
    rows = [i for i, e in enumerate(raw_dft3d) if e["formation_energy_peratom"] != "na"]
    s = seed123_split(len(rows))
    lists = official_lists(EF)
    for k in ("train", "val", "test"):
        jids = [raw_dft3d[rows[j]]["jid"] for j in s[k]]
        # the leaderboard key order is the first-occurrence order of the shuffled list
        assert list(dict.fromkeys(jids)) == lists[k]


def test_limited_fixed_eval_subsets(shared_data):
    d = load_task(EF, shared_data / "jarvis")
    a, b = d.limited(train=500, val=100, test=100, seed=0), d.limited(train=500, val=100, test=100, seed=1)
    _check_splits(a)
    assert a.sizes == {"train": 500, "val": 100, "test": 100} and len(a) == 700
    assert a.ids != b.ids
    for k in ("val", "test"):
        assert [a.ids[i] for i in a.splits[k]] == [b.ids[i] for i in b.splits[k]]
    assert {a.ids[i] for i in a.splits["test"]} <= {d.ids[i] for i in d.splits["test"]}
    assert a.dataset_key != d.dataset_key and a.dataset_key != b.dataset_key
    # the protocol (limits + fixed val/test) does not depend on the run seed; the structure list does
    assert a.protocol_key == b.protocol_key != d.protocol_key and d.protocol_key == d.dataset_key
    assert d.limited(train=400, val=100, test=100).protocol_key != a.protocol_key


# ---- the bundled sample ---------------------------------------------------------------------------------


def test_sample_fallback_without_data_dir(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = load_task(EF)
    assert "bundled sample" in d.source and "bundled sample" in capsys.readouterr().err
    assert d.sizes == {"train": 2000, "val": 250, "test": 250}
    _check_splits(d)
    lists = official_lists(EF)
    for k in ("train", "val", "test"):  # official membership is kept
        assert {d.ids[i] for i in d.splits[k]} <= set(lists[k])
    m = load_task("megnet_e_form", "sample")
    assert m.sizes == {"train": 867, "val": 72, "test": 61} and "sample" in m.dataset_key


def test_every_task_loads_from_sample():
    for name in NINE:
        d = load_task(name, "sample")
        _check_splits(d)
        assert min(d.sizes.values()) > 50


def _sample_rows(n=60):
    from bench.tasks.jarvis import SAMPLE_DIR

    with zipfile.ZipFile(SAMPLE_DIR / "jdft_3d-8-18-2021.json.zip") as z:
        return json.loads(z.read("jdft_3d-8-18-2021.json"))[:n]


def _write_jarvis(folder: Path, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "jdft_3d-8-18-2021.json.zip", "w") as z:
        z.writestr("jdft_3d-8-18-2021.json", json.dumps(rows))


def test_na_target_named_and_skip_counted(tmp_path):
    rows = _sample_rows()
    rows[7]["formation_energy_peratom"] = "na"
    _write_jarvis(tmp_path / "d", rows)
    with pytest.raises(TaskError, match=rows[7]["jid"]):
        load_task(EF, tmp_path / "d")
    d = load_task(EF, tmp_path / "d", on_error="skip")
    assert d.skipped and d.skipped[0][0] == rows[7]["jid"] and len(d.skipped) == 1
    assert len(d) == 59


def test_unreadable_structure_named_and_skipped(tmp_path):
    rows = _sample_rows()
    rows[11]["atoms"]["elements"][0] = "Qq"
    _write_jarvis(tmp_path / "d", rows)
    with pytest.raises(TaskError, match=rf"{rows[11]['jid']} \(row 11\).*unknown element 'Qq'"):
        load_task(EF, tmp_path / "d")
    d = load_task(EF, tmp_path / "d", on_error="skip")
    assert [i for i, _ in d.skipped] == [rows[11]["jid"]] and len(d) == 59


def test_target_missing_from_source_is_clear(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "ehull"} for r in _sample_rows()]
    _write_jarvis(tmp_path / "d", rows)
    with pytest.raises(TaskError, match="no 'ehull' values"):
        load_task("dft_3d_ehull", tmp_path / "d")


def test_bad_on_error_option():
    with pytest.raises(TaskError, match="Did you mean 'skip'"):
        load_task(EF, "sample", on_error="skp")


# ---- custom data ----------------------------------------------------------------------------------------


def _cif(s) -> str:
    from pymatgen.core import Structure as PS
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(PS(s.lattice, s.symbols, s.frac)))


@pytest.fixture(scope="module")
def real_structures():
    d = load_task(EF, "sample")
    k = d.splits["test"][:14]
    return [d.structures[i] for i in k], d.targets[k]


def _cgcnn_folder(folder: Path, structs, ys, rows=None):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "id_prop.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        for s, y in zip(structs, ys):
            (folder / f"{s.id}.cif").write_text(_cif(s))
            w.writerow([s.id, y])
        for r in rows or []:
            w.writerow(r)


def test_custom_cgcnn_folder_good(tmp_path, real_structures):
    from bench.tasks.custom import CustomSource, load_custom_task
    from bench.tasks.base import Task

    structs, ys = real_structures
    _cgcnn_folder(tmp_path / "c", structs, ys)
    t = Task("tmp_cgcnn", "custom", "id", "target", "eV/atom", "seed123", kind="custom",
             spec=CustomSource(str(tmp_path / "c"), "cgcnn"))
    d = load_custom_task(t, None, "raise")
    _check_splits(d)
    assert d.sizes == {"train": 11, "val": 1, "test": 1}
    assert np.allclose(d.targets, ys)
    for a, b in zip(d.structures, structs):
        assert a.id == b.id and sorted(a.numbers) == sorted(b.numbers) and abs(a.volume - b.volume) < 1e-3


def test_custom_cgcnn_bad_entries_named(tmp_path, real_structures):
    from bench.tasks.base import Task
    from bench.tasks.custom import CustomSource, load_custom_task

    structs, ys = real_structures
    folder = tmp_path / "c"
    _cgcnn_folder(folder, structs, ys)
    good = (folder / f"{structs[0].id}.cif").read_text()
    cases = {
        "trunc": good[: len(good) // 2 + 7],
        "unknownel": good.replace(f"  {structs[0].symbols[0]}  ", "  Xx  ", 1),
    }
    for name, text in cases.items():
        (folder / f"{name}.cif").write_text(text)
    (folder / "natarget.cif").write_text(good)
    with open(folder / "id_prop.csv", "a") as fh:
        fh.write("trunc,1.0\nunknownel,2.0\nnatarget,na\nnofile,3.0\n")
    t = Task("tmp_bad", "custom", "id", "target", "", "seed123", kind="custom", spec=CustomSource(str(folder), "cgcnn"))
    # each bad entry alone gives an error naming it
    lines = (folder / "id_prop.csv").read_text().splitlines()
    base, extra = lines[:-4], lines[-4:]
    expect = {"trunc": r"trunc\.cif.*(malformed|truncated)", "unknownel": r"unknownel\.cif.*unknown element 'Xx'",
              "natarget": r"natarget.*'na'", "nofile": r"nofile\.cif.*not found"}
    for line in extra:
        key = line.split(",")[0]
        (folder / "id_prop.csv").write_text("\n".join(base + [line]) + "\n")
        with pytest.raises(TaskError, match=expect[key]):
            load_custom_task(t, None, "raise")
    (folder / "id_prop.csv").write_text("\n".join(lines) + "\n")
    d = load_custom_task(t, None, "skip")
    assert sorted(i for i, _ in d.skipped) == ["natarget", "nofile", "trunc", "unknownel"]
    assert len(d) == 14


def test_custom_csv_and_cli_add(tmp_path, real_structures, capsys):
    from bench.cli import main
    from bench.tasks.custom import registry_path

    structs, ys = real_structures
    path = tmp_path / "table.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material", "cif", "band_gap", "notes"])
        for k, (s, y) in enumerate(zip(structs, ys)):
            text = _cif(s) if k % 2 else json.dumps(s.to_jarvis())  # CIF text and jarvis atoms dicts
            w.writerow([s.id, text, y, "x"])
    data_dir = tmp_path / "data"
    # a typo in the target column is named, with a suggestion
    rc = main(["data", "add", "my_gap", str(path), "--target", "band_gp", "--id-column", "material",
               "--data-dir", str(data_dir)])
    assert rc == 2 and "did you mean 'band_gap'" in capsys.readouterr().err.lower()
    rc = main(["data", "add", "my_gap", str(path), "--target", "band_gap", "--id-column", "material",
               "--unit", "eV", "--data-dir", str(data_dir), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sizes"] == {"train": 11, "val": 1, "test": 1}
    reg = json.loads(registry_path(data_dir).read_text())
    assert reg["tasks"]["my_gap"]["target"] == "band_gap" and reg["tasks"]["my_gap"]["structure_column"] == "cif"
    TASKS._remove("my_gap")  # as in a fresh process: found again through the registry file of the data dir
    d = load_task("my_gap", data_dir)
    assert d.unit == "eV" and sorted(d.ids) == sorted(s.id for s in structs)
    assert main(["data", "info", "my_gap", "--data-dir", str(data_dir)]) == 0
    assert "seed-123" in capsys.readouterr().out
    TASKS._remove("my_gap")


def test_custom_csv_poscar_and_na_row(tmp_path, real_structures):
    from bench.tasks.custom import add_custom_task

    structs, ys = real_structures
    from jarvis.core.atoms import Atoms
    from jarvis.io.vasp.inputs import Poscar

    rows = []
    for s, y in zip(structs, ys):
        a = Atoms(lattice_mat=s.lattice, coords=s.frac, elements=s.symbols, cartesian=False)
        rows.append({"id": s.id, "poscar": Poscar(a).to_string(), "y": y})
    rows[3]["y"] = "na"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(TaskError, match=rf"t\.json row 4 \(id {structs[3].id}\).*'na'"):
        add_custom_task("poscar_task", path, data_dir=tmp_path / "data")
    d = add_custom_task("poscar_task", path, data_dir=tmp_path / "data", on_error="skip")
    assert len(d.skipped) == 1 and len(d) == 13
    assert all(abs(a.volume - b.volume) < 1e-3 for a, b in zip(d.structures, [s for k, s in enumerate(structs) if k != 3]))
    TASKS._remove("poscar_task")


def test_data_info_json(capsys):
    from bench.cli import main

    assert main(["data", "info", "dft_3d_mbj_bandgap", "--data-dir", "sample", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sizes"]["train"] > 500 and info["elements"]["count"] > 50
    t = info["target"]["all"]
    assert t["min"] >= 0 and t["mad"] > 0 and t["std"] > 0 and info["atoms_per_structure"]["min"] >= 1


# ---- custom data: the skip choice belongs to the registration; every bad entry named with its cause ---------


@pytest.fixture
def forget_tasks():
    """Names of custom tasks a test registers, removed afterwards (as a fresh process would not know them)."""
    names: list[str] = []
    yield names
    for n in names:
        if n in TASKS:
            TASKS._remove(n)


def _bad_cifs(good: str, symbol: str) -> dict[str, str]:
    """CIF files derived from a real one, each bad in one way that pymatgen reports only obscurely."""
    import re

    site = next(line for line in good.splitlines() if line.split()[:1] == [symbol])
    cols = site.split()
    moved = cols[:3] + [f"{float(cols[3]) + 0.004:.8f}"] + cols[4:]  # the same atom again, a few 0.01 Å away
    return {
        "overlap": good + "  " + "  ".join([cols[0], cols[1] + "x"] + cols[2:]) + "\n",
        "nancoord": good.replace(site, "  ".join(cols[:3] + ["nan"] + cols[4:])),
        "zerovolume": re.sub(r"_cell_length_a\s+\S+", "_cell_length_a   0.0", good),
        "empty": "",
        "tooclose": good + "  " + "  ".join([moved[0], moved[1] + "x"] + moved[2:]) + "\n",
    }


def test_custom_every_bad_entry_named_with_its_real_cause(tmp_path, real_structures):
    from bench.tasks.base import Task
    from bench.tasks.custom import CustomSource, load_custom_task

    structs, ys = real_structures
    folder = tmp_path / "c"
    _cgcnn_folder(folder, structs, ys)
    bad = _bad_cifs((folder / f"{structs[0].id}.cif").read_text(), structs[0].symbols[0])
    for name, text in bad.items():
        (folder / f"{name}.cif").write_text(text)
    missing = [f"nofile{k}" for k in range(8)]
    with open(folder / "id_prop.csv", "a") as fh:
        fh.writelines(f"{i},1.0\n" for i in [*bad, *missing])
    t = Task("tmp_many_bad", "custom", "id", "target", "", "seed123", kind="custom",
             spec=CustomSource(str(folder), "cgcnn"))
    with pytest.raises(TaskError) as e:
        load_custom_task(t, None, "raise")
    msg = str(e.value)
    assert "13 bad entries" in msg and "and 3 more" in msg  # ten named, the rest counted and listed in a file
    for name, cause in {"overlap": "atom sites overlap", "nancoord": "non-finite fractional coordinates",
                        "zerovolume": "zero-volume cell", "empty": "is empty",
                        "tooclose": r"are 0\.0\d+ Å apart \(periodic images included\)"}.items():
        assert re.search(rf"entry {name}\.cif \(id_prop\.csv line \d+\): .*{cause}", msg), (name, msg)
    assert "Invalid CIF file with no structures" not in msg
    listing = Path(re.search(r"are listed in (\S+)\)", msg).group(1))
    assert [line.split(".cif")[0].split()[-1] for line in listing.read_text().splitlines()] == [*bad, *missing]
    d = load_custom_task(t, None, "skip")
    assert len(d) == 14 and len(d.skipped) == 13


def _folder_with_bad_entries(folder: Path, structs, ys) -> None:
    _cgcnn_folder(folder, structs, ys)
    (folder / "empty.cif").write_text("")
    with open(folder / "id_prop.csv", "a") as fh:
        fh.write("empty,1.0\nnofile,2.0\n")


def test_custom_skip_bad_is_stored_and_honoured_by_train_and_run(tmp_path, real_structures, capsys,
                                                                 forget_tasks):
    from bench.cli import main
    from bench.runner import run_id
    from bench.tasks.custom import registry_path

    structs, ys = real_structures
    _folder_with_bad_entries(tmp_path / "c", structs, ys)
    data_dir = str(tmp_path / "data")
    forget_tasks += ["skipping", "strict"]
    assert main(["data", "add", "skipping", str(tmp_path / "c"), "--skip-bad", "--data-dir", data_dir]) == 0
    assert "skipped 2" in capsys.readouterr().out
    TASKS._remove("skipping")  # a fresh process: found through the registry file, with its skip choice
    # bench run --tasks skipping --data-dir D: the plan finds the task there, and plans each trial through
    # runner.run_id, which loads the task (honouring the choice) without training
    from bench.cli import build_parser
    from bench.commands.run import build_plan
    from bench.sweep import planned_run_id, trial_configs

    plan = build_plan(build_parser().parse_args(["run", "--encoder", "cgcnn", "--tasks", "skipping", "--data-dir",
                                                 data_dir, "--fractions", "1.0", "--seeds", "0", "--epochs", "1"]))
    configs = trial_configs(plan, {})
    assert configs and all(planned_run_id(c) for c in configs)
    assert capsys.readouterr().err.count("task skipping: skipped 2 bad entries (registered with --skip-bad)") == 1
    d = load_task("skipping", data_dir)  # no on_error given: the registration decides
    assert sorted(i for i, _ in d.skipped) == ["empty", "nofile"] and len(d) == 14
    # bench train: trains, says how many were skipped, and the record keeps the count
    out = tmp_path / "rec.json"
    args = ["train", "--task", "skipping", "--data-dir", data_dir, "--encoder", "cgcnn", "--features", "onehot",
            "--epochs", "1", "--encoder-option", "hidden=8", "--encoder-option", "layers=1", "--no-progress"]
    assert main(args + ["--out", str(out)]) == 0
    assert "| 2 bad entries skipped" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["skipped_entries"] == 2 and "2 bad entries skipped (registered with --skip-bad)" in rec["data_source"]
    assert run_id({"task": "skipping", "encoder": "cgcnn", "features": "onehot", "data_dir": data_dir,
                   "epochs": 1, "encoder_options": {"hidden": 8, "layers": 1}}) == rec["run_id"]
    assert json.loads(registry_path(data_dir).read_text())["tasks"]["skipping"]["skip_bad"] is True
    # registered without --skip-bad: refused at registration, and the hint is the registration, not train
    assert main(["data", "add", "strict", str(tmp_path / "c"), "--data-dir", data_dir]) == 2
    err = capsys.readouterr().err
    assert "2 bad entries" in err and "empty.cif" in err and "nofile.cif" in err and "pass --skip-bad" in err
    assert "strict" not in json.loads(registry_path(data_dir).read_text())["tasks"]


def test_custom_registered_without_skip_names_the_fix(tmp_path, real_structures, forget_tasks):
    from bench.tasks.custom import add_custom_task

    structs, ys = real_structures
    _cgcnn_folder(tmp_path / "c", structs, ys)
    forget_tasks.append("later_bad")
    add_custom_task("later_bad", tmp_path / "c", unit="eV", data_dir=tmp_path / "data")
    (tmp_path / "c" / f"{structs[2].id}.cif").write_text("")  # the data change after registration
    with pytest.raises(TaskError) as e:
        load_task("later_bad", tmp_path / "data")
    msg = str(e.value)
    assert f"{structs[2].id}.cif" in msg and "is empty" in msg
    assert f"bench data add later_bad {tmp_path / 'c'} --unit eV --data-dir {tmp_path / 'data'} --skip-bad" in msg


def test_custom_empty_validation_or_test_split_refused(tmp_path, real_structures, forget_tasks):
    from bench.tasks.custom import add_custom_task, registry_path

    structs, ys = real_structures
    _cgcnn_folder(tmp_path / "c", structs[:9], ys[:9])
    forget_tasks.append("too_small")
    with pytest.raises(TaskError, match=r"9 usable entries.*train 7, val 0, test 0; validation and test need"):
        add_custom_task("too_small", tmp_path / "c", data_dir=tmp_path / "data")
    assert not registry_path(tmp_path / "data").exists() and "too_small" not in TASKS
    _cgcnn_folder(tmp_path / "c", structs[:10], ys[:10])
    assert add_custom_task("too_small", tmp_path / "c", data_dir=tmp_path / "data").sizes == \
        {"train": 8, "val": 1, "test": 1}


def _table(structs, ys) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "cif", "gap"])
    for s, y in zip(structs, ys):
        w.writerow([s.id, _cif(s), y])
    return buf.getvalue()


@pytest.mark.parametrize("kind, match", [
    ("utf-16", r"table\.csv: not UTF-8 text \(it holds NUL bytes: a binary file, or UTF-16\?\)"),
    ("latin-1", r"table\.csv: not UTF-8 text \(byte \d+ is not valid UTF-8\)"),
    ("binary", r"table\.csv: not UTF-8 text"),
])
def test_custom_table_not_utf8_is_one_line_naming_the_file(tmp_path, real_structures, capsys, kind, match):
    from bench.cli import main

    structs, ys = real_structures
    text = _table(structs, ys)
    path = tmp_path / "table.csv"
    data = {"utf-16": text.encode("utf-16"), "latin-1": text.replace("id,", "idé,", 1).encode("latin-1"),
            "binary": zipfile.ZipFile.__doc__.encode() + bytes(range(256))}[kind]
    path.write_bytes(data)
    assert main(["data", "add", "enc", str(path), "--target", "gap", "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_custom_table_utf8_with_bom_accepted(tmp_path, real_structures, forget_tasks):
    from bench.tasks.custom import add_custom_task

    structs, ys = real_structures
    path = tmp_path / "table.csv"
    path.write_bytes(_table(structs, ys).encode("utf-8-sig"))  # as Excel saves "CSV UTF-8"
    forget_tasks.append("bom")
    d = add_custom_task("bom", path, target="gap", id_column="id", data_dir=tmp_path / "d")
    assert sorted(d.ids) == sorted(s.id for s in structs) and np.allclose(sorted(d.targets), sorted(ys))

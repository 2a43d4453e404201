"""The nine JARVIS-Leaderboard single-property tasks (Choudhary et al., npj Comput. Mater. 10, 93 (2024)) on
JARVIS-DFT 3D 2021 and MP 2018.6.1 ("megnet"), read through jarvis-tools (``jarvis.db.figshare.data``).

Data location: ``<data_dir>/<file>.json.zip`` (or ``<data_dir>/jarvis/...``), the file names jarvis-tools uses.
Without an explicit data dir and without the file in the user cache, the bundled sample (``tasks/sample/``) is
used, with a notice. A parsed copy of each dataset (numpy arrays in an .npz, no pickle) is cached under
``cache_dir()/datasets`` keyed by the source file's size and hash, so a second load skips JSON parsing and the
seven dft_3d tasks share one parse.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from bench import paths
from bench.structures import Structure, StructureError
from bench.tasks.base import (
    LOADERS,
    SPLITS,
    Task,
    TaskData,
    TaskError,
    _with_selection,
    assign_official,
    cached_arrays,
    notice,
    register_task,
)

PACKAGE = Path(__file__).resolve().parent
SPLITS_DIR = PACKAGE / "splits"
SAMPLE_DIR = PACKAGE / "sample"
PARSE_VERSION = "2"  # bump when the cached array layout changes

# jarvis-tools dataset name -> (file name inside the zip, id key, target keys kept in the parse cache)
DATASETS = {
    "dft_3d_2021": (
        "jdft_3d-8-18-2021.json",
        "jid",
        ("formation_energy_peratom", "optb88vdw_bandgap", "optb88vdw_total_energy", "mbj_bandgap", "ehull",
         "bulk_modulus_kv", "shear_modulus_gv"),
    ),
    "megnet": ("megnet.json", "id", ("e_form", "gap pbe")),
}

_MEGNET_SUBSET = (
    "offline copy is a subset: MP 2018.6.1 rows with an obtainable structure, 36,476 of 69,239 "
    "(official split 60,000/5,000/4,239; present train 31,623, val 2,615, test 2,238)"
)

_DFT3D = [
    ("dft_3d_formation_energy_peratom", "formation_energy_peratom", "eV/atom", (44569, 5572, 5572),
     "JARVIS-DFT 3D 2021 formation energy per atom (OptB88vdW)"),
    ("dft_3d_optb88vdw_bandgap", "optb88vdw_bandgap", "eV", (44569, 5572, 5572),
     "JARVIS-DFT 3D 2021 band gap (OptB88vdW)"),
    ("dft_3d_optb88vdw_total_energy", "optb88vdw_total_energy", "eV/atom", (44569, 5572, 5572),
     "JARVIS-DFT 3D 2021 total energy per atom (OptB88vdW)"),
    ("dft_3d_mbj_bandgap", "mbj_bandgap", "eV", (14535, 1817, 1815), "JARVIS-DFT 3D 2021 band gap (TBmBJ)"),
    ("dft_3d_ehull", "ehull", "eV", (44290, 5537, 5537), "JARVIS-DFT 3D 2021 energy above hull (as JARVIS 2021 gives it)"),
    ("dft_3d_bulk_modulus_kv", "bulk_modulus_kv", "GPa", (15744, 1968, 1968), "JARVIS-DFT 3D 2021 Voigt bulk modulus"),
    ("dft_3d_shear_modulus_gv", "shear_modulus_gv", "GPa", (15744, 1968, 1968), "JARVIS-DFT 3D 2021 Voigt shear modulus"),
]
_MEGNET = [
    ("megnet_e_form", "e_form", "eV/atom", "MP 2018.6.1 formation energy per atom (PBE)"),
    ("megnet_gappbe", "gap pbe", "eV", "MP 2018.6.1 band gap (PBE)"),
]

for _name, _key, _unit, _sizes, _desc in _DFT3D:
    register_task(_name, description=f"{_desc} [dft_3d_2021, {_unit}, official split]")(
        Task(_name, "dft_3d_2021", "jid", _key, _unit, "official", description=_desc, official_sizes=_sizes)
    )
for _name, _key, _unit, _desc in _MEGNET:
    register_task(_name, description=f"{_desc} [megnet, {_unit}, official split; offline subset]")(
        Task(_name, "megnet", "id", _key, _unit, "official", description=_desc, official_sizes=(60000, 5000, 4239),
             subset_note=_MEGNET_SUBSET)
    )


# ---- locating the source file ----------------------------------------------------------------------------


def dataset_file(dataset: str, data_dir=None) -> tuple[Path, bool]:
    """(path of the jarvis-tools zip to read, is_sample). See the module docstring for the rules."""
    if dataset not in DATASETS:
        from bench.registry import suggest

        raise TaskError(suggest(dataset, list(DATASETS), "dataset"))
    zname = DATASETS[dataset][0] + ".zip"
    if str(data_dir) == "sample":
        return SAMPLE_DIR / zname, True
    base = paths.data_dir(data_dir)
    for cand in (base / zname, base / "jarvis" / zname):
        if cand.is_file():
            return cand, False
    if not paths.data_dir_is_explicit(data_dir):
        notice(
            f"no {zname} in {base} (no --data-dir or BENCH_DATA_DIR given): using the bundled sample "
            f"({SAMPLE_DIR / zname}); results on it are NOT comparable with published numbers"
        )
        return SAMPLE_DIR / zname, True
    return base / zname, False  # explicit dir without the file: jarvis-tools downloads it there


def _jarvis_rows(dataset: str, path: Path) -> list[dict]:
    """Rows through jarvis-tools (which downloads the file when it is missing). Its stdout chatter ("Obtaining
    3D dataset ...", the reference, "Loading completed.") is dropped; the download progress bar (stderr) and
    errors are kept."""
    from jarvis.db.figshare import data as jarvis_data

    existed = path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not existed:
        notice(f"downloading {dataset} into {path.parent} (jarvis-tools)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return jarvis_data(dataset, store_dir=str(path.parent))
    except Exception as e:  # network failure, interrupted download, corrupt zip
        if not existed and path.is_file():
            path.unlink()  # jarvis-tools leaves a partial download behind; don't let it look like data
        what = "read" if existed else "download"
        raise TaskError(
            f"could not {what} {dataset} at {path} ({type(e).__name__}: {e}). Put the jarvis-tools file "
            f"{path.name} there, pass --data-dir with a folder holding it, or use --data-dir sample"
        ) from None


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- parse cache ---------------------------------------------------------------------------------------


def _to_float(v) -> float:
    if isinstance(v, bool) or v is None:
        return float("nan")
    try:
        return float(v)  # megnet official values are strings; "na" -> ValueError
    except (TypeError, ValueError):
        return float("nan")


def _parse(dataset: str, rows: list[dict]) -> dict[str, np.ndarray]:
    _, id_key, keys = DATASETS[dataset]
    seen: set[str] = set()
    ids, rowi, natoms, nums, frac, lat, errors = [], [], [], [], [], [], []
    tv = {k: [] for k in keys}
    for r, e in enumerate(rows):
        i = str(e[id_key])
        if i in seen:  # duplicated id (identical structures, see data README): first row is the entry
            continue
        seen.add(i)
        try:
            s = Structure.from_jarvis(e.get("atoms") or {}, f"{i} (row {r})")
            err = ""
        except StructureError as ex:  # kept as an entry with an error; the loader raises or skips it
            s, err = None, str(ex)
        ids.append(i)
        rowi.append(r)
        errors.append(err)
        natoms.append(s.num_atoms if s is not None else 0)
        if s is not None:
            nums.append(s.numbers)
            frac.append(s.frac)
        lat.append(s.lattice if s is not None else np.eye(3))
        for k in keys:
            tv[k].append(_to_float(e.get(k, "na")))
    out = {
        "ids": np.asarray(ids),
        "row": np.asarray(rowi, dtype=np.int64),
        "errors": np.asarray(errors, dtype=str),
        "natoms": np.asarray(natoms, dtype=np.int64),
        "numbers": np.concatenate(nums).astype(np.int16) if nums else np.zeros(0, np.int16),
        "frac": np.concatenate(frac) if frac else np.zeros((0, 3)),
        "lattice": np.asarray(lat, dtype=np.float64).reshape(-1, 3, 3),
        "keys": np.asarray(list(keys)),
        "n_rows": np.asarray(len(rows)),
    }
    for j, k in enumerate(keys):
        present = [k in e for e in rows[:50]]
        out[f"target_{j}"] = np.asarray(tv[k], dtype=np.float64)
        out[f"has_{j}"] = np.asarray(any(present) or not rows)
    return out


class Parsed:
    """One parsed dataset file: unique entries (first row per id) as arrays, plus identity."""

    def __init__(self, dataset: str, path: Path, arrays: dict, digest: str, is_sample: bool) -> None:
        self.dataset = dataset
        self.path = path
        self.is_sample = is_sample
        self.digest = digest
        self.ids: list[str] = [str(x) for x in arrays["ids"]]
        self.row = arrays["row"]
        self.errors: list[str] = [str(x) for x in arrays["errors"]]
        self.natoms = arrays["natoms"]
        self.offsets = np.concatenate([[0], np.cumsum(self.natoms)])
        self.numbers = arrays["numbers"].astype(np.int64)
        self.frac = arrays["frac"]
        self.lattice = arrays["lattice"]
        self.n_rows = int(arrays["n_rows"])
        keys = [str(k) for k in arrays["keys"]]
        self.targets = {k: arrays[f"target_{j}"] for j, k in enumerate(keys) if bool(arrays[f"has_{j}"])}
        self.key = f"{dataset}{'-sample' if is_sample else ''}-{path.stat().st_size}-{digest[:12]}"
        self._structures: list[Structure] | None = None

    def structure(self, k: int) -> Structure | None:
        """Entry k's structure, or None when its row could not be read (see ``errors[k]``)."""
        if self.errors[k]:
            return None
        a, b = self.offsets[k], self.offsets[k + 1]
        return Structure(self.lattice[k], self.frac[a:b], self.numbers[a:b], id=self.ids[k])

    def structures(self) -> list[Structure]:
        if self._structures is None:
            self._structures = [self.structure(k) for k in range(len(self.ids))]
        return self._structures


@lru_cache(maxsize=8)
def _parsed_cached(dataset: str, path_str: str, size: int, mtime_ns: int, is_sample: bool) -> Parsed:
    path = Path(path_str)
    digest = _file_digest(path)
    cache = paths.cache_dir() / "datasets" / f"{dataset}-{size}-{digest[:16]}-v{PARSE_VERSION}.npz"
    arrays = cached_arrays(cache, lambda: _parse(dataset, _jarvis_rows(dataset, path)), path)
    return Parsed(dataset, path, arrays, digest, is_sample)


def parsed_dataset(dataset: str, data_dir=None) -> Parsed:
    """The parsed dataset (cached in memory per process and on disk per file content)."""
    path, is_sample = dataset_file(dataset, data_dir)
    if not path.is_file():
        _jarvis_rows(dataset, path)  # downloads into the explicit data dir
    st = path.stat()
    return _parsed_cached(dataset, str(path.resolve()), st.st_size, st.st_mtime_ns, is_sample)


# ---- official splits -----------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def official_lists(task: str) -> dict[str, list[str]]:
    """The JARVIS-Leaderboard id lists for ``task`` (train/val/test, in the leaderboard's key order)."""
    path = SPLITS_DIR / f"{task}.json.gz"
    if not path.is_file():
        raise TaskError(f"task {task!r}: no official split list at {path} (regenerate with scripts/make_splits.py)")
    with gzip.open(path, "rt") as fh:
        doc = json.load(fh)
    return {k: list(doc[k]) for k in SPLITS}


# ---- the loader ----------------------------------------------------------------------------------------


def load_jarvis_task(task: Task, data_dir, on_error: str) -> TaskData:
    p = parsed_dataset(task.dataset, data_dir)
    if task.target_key not in p.targets:
        raise TaskError(
            f"task {task.name}: the {'bundled sample' if p.is_sample else 'dataset file ' + str(p.path)} has no "
            f"{task.target_key!r} values (it has {sorted(p.targets)}); pass --data-dir with the full "
            f"{task.dataset} file"
        )
    lists = official_lists(task.name)
    pos_splits, info = assign_official(p.ids, lists)
    y_all = p.targets[task.target_key]
    skipped: list[tuple[str, str]] = []
    for name in SPLITS:
        idx = pos_splits[name]
        broken = np.array([bool(p.errors[k]) for k in idx], dtype=bool)
        if broken.any():
            if on_error == "raise":
                k = int(idx[broken][0])
                raise TaskError(f"task {task.name}: {p.errors[k]} ({int(broken.sum())} unreadable entries in {name}). "
                                "Use on_error='skip' to leave them out.")
            skipped += [(p.ids[int(k)], f"{name}: {p.errors[int(k)]}") for k in idx[broken]]
            idx = idx[~broken]
            pos_splits[name] = idx
        bad = idx[~np.isfinite(y_all[idx])]
        if len(bad):
            if on_error == "raise":
                k = int(bad[0])
                raise TaskError(
                    f"task {task.name}: entry {p.ids[k]} (row {int(p.row[k])} of {p.path.name}, {name} split) has "
                    f"no finite {task.target_key!r} value ('na' or non-finite); {len(bad)} such entries in "
                    f"{name}. Use on_error='skip' to leave them out."
                )
            skipped += [(p.ids[int(k)], f"{name}: {task.target_key} is 'na' or non-finite") for k in bad]
            pos_splits[name] = idx[np.isfinite(y_all[idx])]
    used = np.unique(np.concatenate([pos_splits[k] for k in SPLITS]))
    remap = np.full(len(p.ids), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    all_structs = p.structures()
    ids = [p.ids[k] for k in used]
    splits = {k: remap[v] for k, v in pos_splits.items()}
    notes = []
    if info["in_two_splits"]:
        notes.append(
            "ids in two official splits kept only in the later of test > val > train: "
            + ", ".join(f"{i} ({a} dropped, kept in {b})" for i, a, b in info["in_two_splits"])
        )
    miss = info["missing"]
    if any(miss.values()):
        notes.append("official ids absent from the source: " + ", ".join(f"{k} {v}" for k, v in miss.items()))
    if p.n_rows != len(p.ids):
        notes.append(f"{p.n_rows - len(p.ids)} duplicated-id rows ignored (first row per id kept)")
    sizes = "/".join(str(len(splits[k])) for k in SPLITS)
    official = "/".join(str(n) for n in task.official_sizes) if task.official_sizes else "?"
    where = "bundled sample" if p.is_sample else str(p.path)
    source = f"{task.dataset} from {where}; official JARVIS-Leaderboard split {official} -> {sizes} here"
    if p.is_sample:
        source += " (sample restricted to the official split membership)"
    elif task.subset_note:
        source += f" ({task.subset_note})"
    return TaskData(
        task=task.name,
        structures=[all_structs[k] for k in used],
        targets=y_all[used].astype(np.float64),
        ids=ids,
        splits=splits,
        dataset_key=_with_selection(p.key, ids),
        source=source,
        unit=task.unit,
        skipped=skipped,
        notes=notes,
    )


LOADERS["jarvis"] = load_jarvis_task

__all__ = ["DATASETS", "dataset_file", "parsed_dataset", "official_lists", "load_jarvis_task"]

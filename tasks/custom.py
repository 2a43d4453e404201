"""A user's own data as a task: a CGCNN-style folder (``id_prop.csv`` with ``id,target`` rows and ``<id>.cif``
files; Xie & Grossman, Phys. Rev. Lett. 120, 145301 (2018)) or a CSV/JSON table with a structure column (CIF text,
POSCAR text, or a jarvis-tools atoms dict) and a target column.

Registered with ``bench data add NAME PATH ...`` into ``<data dir>/custom_tasks.json`` (atomic write) and
re-registered on import of ``bench.tasks`` so ``--task NAME`` works everywhere. Custom data has no official split,
so it is split with ALIGNN's seed-123 rule (``bench.tasks.base.seed123_split``) over the entries that have a value,
in file order. A bad entry (missing, empty or malformed CIF, unknown element, atoms closer than 0.5 Å,
"na"/non-finite target, duplicate id) is an error naming every bad entry with its cause, or is skipped and counted:
``bench data add --skip-bad`` (``on_error="skip"``) stores that choice with the task (``skip_bad`` in the registry),
so every later load of it (``bench train``, ``bench run``, ``bench data info``) skips the same entries and reports
how many. A task whose validation or test split would be empty is refused. Parsed structures are cached (npz, no
pickle) keyed by the content of every input file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bench import paths
from bench.registry import TASKS, suggest
from bench.structures import Structure, StructureError, check_distances
from bench.tasks.base import LOADERS, Task, TaskData, TaskError, _with_selection, notice, seed123_split

REGISTRY_FILE = "custom_tasks.json"
PARSE_VERSION = "2"  # 2: atoms closer than 0.5 Å refused; CIF failures give their real cause
SHOW_BAD = 10  # bad entries named in an error message; the rest are counted and listed in a file
FORMATS = ("cgcnn", "csv", "json")
_STRUCTURE_COLUMNS = ("atoms", "structure", "cif", "poscar")
_ID_COLUMNS = ("id", "jid", "material_id", "mpid", "name")


@dataclass(frozen=True)
class CustomSource:
    path: str  # absolute path of the folder (cgcnn) or the table file
    format: str  # "cgcnn" | "csv" | "json"
    target: str | None = None  # column (csv/json); cgcnn uses the second id_prop.csv column
    structure_column: str | None = None
    id_column: str | None = None
    skip_bad: bool = False  # registered with --skip-bad: every load leaves bad entries out (counted)

    def describe(self) -> dict:
        return {"path": self.path, "format": self.format, "target_column": self.target,
                "structure_column": self.structure_column, "id_column": self.id_column, "skip_bad": self.skip_bad}


# ---- reading raw entries ------------------------------------------------------------------------------


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if not (path / "id_prop.csv").is_file():
            raise TaskError(f"{path}: a data folder needs an id_prop.csv (CGCNN layout: id,target rows + <id>.cif)")
        return "cgcnn"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".json":
        return "json"
    if not path.exists():
        raise TaskError(f"{path}: no such file or folder")
    raise TaskError(f"{path}: unsupported data file (use a CGCNN folder, a .csv or a .json file)")


def _read_text(path: Path) -> str:
    """A data file's text: UTF-8, with or without a byte-order mark; anything else is a one-line error."""
    data = path.read_bytes()
    if b"\x00" in data:  # UTF-16/32 text and binary files hold NUL bytes; UTF-8 text never does
        raise TaskError(f"{path}: not UTF-8 text (it holds NUL bytes: a binary file, or UTF-16?); save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not UTF-8 text (byte {e.start} is not valid UTF-8); save it as UTF-8") from None


def _csv_rows(path: Path, text: str) -> list[list[str]]:
    """CSV rows of ``text``; a structure column may hold CIF text longer than csv's default 128 KiB field limit."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, 1 << 30))
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise TaskError(f"{path}: not a readable CSV file ({e})") from None
    finally:
        csv.field_size_limit(old)


def _table_rows(src: CustomSource) -> tuple[list[str], list[dict]]:
    path = Path(src.path)
    if not path.is_file():
        raise TaskError(f"custom data file {path} not found")
    if src.format == "csv":
        lines = _csv_rows(path, _read_text(path))
        cols = lines[0] if lines else []
        rows = [dict(zip(cols, r)) for r in lines[1:] if r]
        return cols, rows
    try:
        doc = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}: not valid JSON ({e})") from None
    if isinstance(doc, dict):  # {"id": {...}, ...} or {"data": [...]}
        if isinstance(doc.get("data"), list):
            doc = doc["data"]
        else:
            doc = [dict(v, **{"id": k}) if isinstance(v, dict) else {"id": k, "value": v} for k, v in doc.items()]
    if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
        raise TaskError(f"{path}: expected a JSON list of objects (one per structure)")
    cols: list[str] = []
    for r in doc[:100]:
        cols += [c for c in r if c not in cols]
    return cols, doc


def resolve_columns(src: CustomSource, cols: list[str]) -> CustomSource:
    """Fill in structure/id/target columns when not given, checking that named ones exist."""
    path = src.path

    def check(col, what):
        if col is not None and col not in cols:
            raise TaskError(f"{path}: " + suggest(col, cols, f"{what} column"))
        return col

    sc = check(src.structure_column, "structure")
    if sc is None:
        found = [c for c in cols if c.lower() in _STRUCTURE_COLUMNS]
        if not found:
            raise TaskError(f"{path}: no structure column found (looked for {', '.join(_STRUCTURE_COLUMNS)}); "
                            f"name it with --structure-column (columns: {', '.join(cols)})")
        sc = found[0]
    ic = check(src.id_column, "id")
    if ic is None:
        found = [c for c in cols if c.lower() in _ID_COLUMNS and c != sc]
        ic = found[0] if found else None  # None: ids are row numbers
    tc = check(src.target, "target")
    if tc is None:
        rest = [c for c in cols if c not in (sc, ic)]
        if len(rest) != 1:
            raise TaskError(f"{path}: name the target column with --target (candidates: {', '.join(rest) or 'none'})")
        tc = rest[0]
    return replace(src, target=tc, structure_column=sc, id_column=ic)


def _raw_entries(src: CustomSource) -> list[tuple[str, str, object, object]]:
    """(id, where, structure payload, raw target) per entry, in file order. The payload is ("cif-file", path),
    ("text", str) or ("dict", dict)."""
    out = []
    if src.format == "cgcnn":
        folder = Path(src.path)
        idp = folder / "id_prop.csv"
        if not idp.is_file():
            raise TaskError(f"{folder}: id_prop.csv not found")
        for n, row in enumerate(_csv_rows(idp, _read_text(idp)), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise TaskError(f"{idp} line {n}: expected 'id,target', got {','.join(row)!r}")
            i = row[0].strip()
            out.append((i, f"{i}.cif (id_prop.csv line {n})", ("cif-file", str(folder / f"{i}.cif")), row[1]))
        return out
    cols, rows = _table_rows(src)
    src = resolve_columns(src, cols)
    name = Path(src.path).name
    for n, r in enumerate(rows):
        i = str(r.get(src.id_column, "")).strip() if src.id_column else str(n)
        s = r.get(src.structure_column)
        payload = ("dict", s) if isinstance(s, dict) else ("text", "" if s is None else str(s))
        out.append((i, f"{name} row {n + 1} (id {i})", payload, r.get(src.target)))
    return out


def _parse_target(v) -> float:
    if isinstance(v, bool):
        raise ValueError(repr(v))
    x = float(str(v).strip()) if isinstance(v, str) else float(v)
    if not math.isfinite(x):
        raise ValueError(repr(v))
    return x


def _structure(payload, where: str) -> Structure:
    s = _read_structure(payload, where)
    check_distances(s)  # overlapping atoms parse fine but are no crystal
    return s


def _read_structure(payload, where: str) -> Structure:
    kind, value = payload
    if kind == "cif-file":
        p = Path(value)
        if not p.is_file():
            raise StructureError(f"entry {where}: structure file {p} not found")
        data = p.read_bytes()
        if not data.strip():
            raise StructureError(f"entry {where}: structure file {p} is empty")
        return Structure.from_cif(data.decode("utf-8-sig", errors="replace"), where)
    if kind == "dict":
        return Structure.from_jarvis(value, where)
    text = str(value)
    if "\\n" in text and "\n" not in text:
        text = text.replace("\\n", "\n")  # POSCAR/CIF stored with literal \n (as in the leaderboard files)
    t = text.strip()
    if not t:
        raise StructureError(f"entry {where}: empty structure")
    if t.startswith("{"):
        try:
            d = json.loads(t)
        except json.JSONDecodeError as e:
            raise StructureError(f"entry {where}: structure looks like JSON but is not ({e})") from None
        return Structure.from_jarvis(d, where)
    if "_cell_length_a" in t or t.startswith("data_"):
        return Structure.from_cif(text, where)
    return Structure.from_poscar(text, where)


# ---- parse (cached) -----------------------------------------------------------------------------------


def _content_key(src: CustomSource, entries) -> str:
    # skip_bad selects entries (named by the dataset key's id list) but does not change how files parse
    spec = {k: v for k, v in asdict(src).items() if k != "skip_bad"}
    h = hashlib.sha1(json.dumps(spec, sort_keys=True).encode() + PARSE_VERSION.encode())
    if src.format == "cgcnn":
        h.update((Path(src.path) / "id_prop.csv").read_bytes())
        for _, _, (kind, value), _ in entries:
            p = Path(value)
            h.update(p.name.encode())
            h.update(p.read_bytes() if p.is_file() else b"<missing>")
    else:
        h.update(Path(src.path).read_bytes())
    return h.hexdigest()


def _parse_all(src: CustomSource) -> dict:
    """Every entry: id, structure arrays or an error text, target or an error text. Cached on disk."""
    entries = _raw_entries(src)
    if src.format != "cgcnn":
        cols, _ = _table_rows(src)
        src = resolve_columns(src, cols)
    key = _content_key(src, entries)
    cache = paths.cache_dir() / "custom" / f"{key[:24]}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
            d["key"] = key
            return d
        except Exception as e:
            notice(f"ignoring unreadable parse cache {cache} ({type(e).__name__}: {e})")
    ids, wheres, errors, targets, natoms, nums, frac, lat = [], [], [], [], [], [], [], []
    first_of: dict[str, str] = {}
    for i, where, payload, raw in entries:
        err = ""
        y = float("nan")
        s = None
        if i in first_of:
            err = f"entry {where}: duplicate id {i!r} (first at {first_of[i]})"
        else:
            first_of[i] = where
            try:
                y = _parse_target(raw)
            except (TypeError, ValueError):
                err = f"entry {where}: target {raw!r} is 'na', missing or not a finite number"
            try:
                s = _structure(payload, where)
            except StructureError as e:
                err = err or str(e)
        ids.append(i)
        wheres.append(where)
        errors.append(err)
        targets.append(y if not err else float("nan"))
        n = s.num_atoms if (s is not None and not err) else 0
        natoms.append(n)
        if n:
            nums.append(s.numbers)
            frac.append(s.frac)
            lat.append(s.lattice)
        else:
            lat.append(np.eye(3))
    d = {
        "ids": np.asarray(ids, dtype=str),
        "wheres": np.asarray(wheres, dtype=str),
        "errors": np.asarray(errors, dtype=str),
        "targets": np.asarray(targets, dtype=np.float64),
        "natoms": np.asarray(natoms, dtype=np.int64),
        "numbers": np.concatenate(nums).astype(np.int16) if nums else np.zeros(0, np.int16),
        "frac": np.concatenate(frac) if frac else np.zeros((0, 3)),
        "lattice": np.asarray(lat, dtype=np.float64).reshape(-1, 3, 3),
    }
    with paths.atomic_path(cache) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **d)
    d["key"] = key
    return d


def _bad_entries(errors: list[str], key: str) -> str:
    """The bad entries, one per line: all of them up to SHOW_BAD, else the first SHOW_BAD, a count of the rest
    and the file that lists them all."""
    lines = [f"  {e}" for e in errors[:SHOW_BAD]]
    if len(errors) > SHOW_BAD:
        listing = paths.cache_dir() / "custom" / f"{key[:24]}.bad-entries.txt"
        paths.atomic_write_text(listing, "\n".join(errors) + "\n")
        lines.append(f"  and {len(errors) - SHOW_BAD} more (all {len(errors)} are listed in {listing})")
    return "\n".join(lines)


def _add_command(task: Task, data_dir) -> str:
    """The ``bench data add`` line that registers ``task`` again, with --skip-bad."""
    import shlex

    src: CustomSource = task.spec
    words = ["bench", "data", "add", task.name, src.path]
    if src.format != "cgcnn":
        words += ["--target", src.target or "", "--structure-column", src.structure_column or ""]
        if src.id_column:
            words += ["--id-column", src.id_column]
    if task.unit:
        words += ["--unit", task.unit]
    if data_dir is not None:
        words += ["--data-dir", str(data_dir)]
    return " ".join(shlex.quote(w) for w in words + ["--skip-bad"])


def load_custom_task(task: Task, data_dir, on_error: str, *, registering: bool = False) -> TaskData:
    """Load a custom task. A task registered with ``skip_bad`` always skips its bad entries, whatever
    ``on_error`` says: the choice was made, and checked, when it was registered."""
    src: CustomSource = task.spec
    skip = on_error == "skip" or src.skip_bad
    d = _parse_all(src)
    errors = [str(e) for e in d["errors"]]
    ids_all = [str(i) for i in d["ids"]]
    bad = [k for k, e in enumerate(errors) if e]
    if bad and not skip:
        n = len(bad)
        head = (f"cannot register task {task.name}" if registering else f"task {task.name}") + \
            f": {n} bad entr{'y' if n == 1 else 'ies'} in {src.path}:\n"
        fix = ("pass --skip-bad (on_error='skip') to register it without them; the choice is stored with the task, "
               "so bench train and bench run skip the same entries and report how many" if registering else
               f"register it again with `{_add_command(task, data_dir)}` so that bench train and bench run skip "
               "them and report how many")
        raise TaskError(head + _bad_entries([errors[k] for k in bad], d["key"]) + f"\nFix {'it' if n == 1 else 'them'}, or {fix}.")
    offsets = np.concatenate([[0], np.cumsum(d["natoms"])])
    good = [k for k, e in enumerate(errors) if not e]
    splits = seed123_split(len(good))
    sizes = {k: len(v) for k, v in splits.items()}
    if not (sizes["val"] and sizes["test"]):
        skipped = f" ({len(bad)} bad entries skipped)" if bad else ""
        raise TaskError(
            f"task {task.name}: the seed-123 split of its {len(good)} usable entries{skipped} in {src.path} gives "
            f"train {sizes['train']}, val {sizes['val']}, test {sizes['test']}; validation and test need at least one "
            "entry each (10 usable entries at least)")
    structures, ids = [], []
    for k in good:
        a, b = offsets[k], offsets[k + 1]
        structures.append(Structure(d["lattice"][k], d["frac"][a:b], d["numbers"][a:b].astype(np.int64), id=ids_all[k]))
        ids.append(ids_all[k])
    targets = d["targets"][good].astype(np.float64)
    n_left = len(good) - sum(sizes.values())
    notes = [f"split: ALIGNN seed-123 rule over the {len(good)} usable entries in file order"
             + (f"; {n_left} leftover entr{'y' if n_left == 1 else 'ies'} in no split" if n_left else "")]
    why = "registered with --skip-bad" if src.skip_bad else "on_error='skip'"
    skipped_note = f"; {len(bad)} bad entr{'y' if len(bad) == 1 else 'ies'} skipped ({why})" if bad else ""
    return TaskData(
        task=task.name,
        structures=structures,
        targets=targets,
        ids=ids,
        splits=splits,
        dataset_key=_with_selection(f"custom-{d['key'][:16]}", ids),
        source=f"custom {src.format} data {src.path}; seed-123 split{skipped_note}",
        unit=task.unit,
        skipped=[(ids_all[k], errors[k]) for k in bad],
        notes=notes,
    )


LOADERS["custom"] = load_custom_task


# ---- the registry file --------------------------------------------------------------------------------


def registry_path(data_dir=None) -> Path:
    base = paths.data_dir(data_dir) if str(data_dir) != "sample" else paths.data_dir(None)
    return base / REGISTRY_FILE


def _read_registry(path: Path) -> dict:
    if not path.is_file():
        return {"version": 1, "tasks": {}}
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}: custom task registry is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), dict):
        raise TaskError(f"{path}: custom task registry must be {{'version': 1, 'tasks': {{...}}}}")
    return doc


def _task_from_record(name: str, rec: dict) -> Task:
    src = CustomSource(rec["path"], rec["format"], rec.get("target"), rec.get("structure_column"),
                       rec.get("id_column"), bool(rec.get("skip_bad", False)))
    return Task(name, "custom", src.id_column or "(row)", src.target or "target", rec.get("unit", ""), "seed123",
                kind="custom", description=rec.get("description") or f"custom data {rec['path']}", spec=src)


def _desc(rec: dict) -> str:
    skip = ", bad entries skipped" if rec.get("skip_bad") else ""
    return rec.get("description") or f"custom data {rec['path']} [{rec['format']}, {rec.get('unit') or 'no unit'}, seed-123 split{skip}]"


def register_custom_tasks(data_dir=None, *, quiet: bool = False) -> list[str]:
    """Register the tasks listed in ``<data dir>/custom_tasks.json``; returns their names."""
    path = registry_path(data_dir)
    try:
        doc = _read_registry(path)
    except TaskError as e:
        if quiet:
            notice(str(e))
            return []
        raise
    names = []
    for name, rec in doc["tasks"].items():
        if name in TASKS:
            if TASKS.get(name).kind != "custom":
                notice(f"{path}: custom task {name!r} clashes with a built-in task; ignored")
                continue
            if TASKS.get(name) == _task_from_record(name, rec):
                names.append(name)
                continue
            TASKS._remove(name)  # same name re-registered from an updated registry file
        TASKS.add(name, _task_from_record(name, rec), description=_desc(rec),
                  source=str(path))
        names.append(name)
    return names


def add_custom_task(
    name: str,
    path,
    *,
    target: str | None = None,
    structure_column: str | None = None,
    id_column: str | None = None,
    unit: str = "",
    data_dir=None,
    overwrite: bool = False,
    on_error: str = "raise",
) -> TaskData:
    """Check a user data set (by loading it), then record it in ``<data dir>/custom_tasks.json``. With
    ``on_error="skip"`` the task is stored with ``skip_bad``: every later load skips (and counts) its bad entries."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name or ""):
        raise TaskError(f"task name {name!r}: use letters, digits, '_', '-', '.'")
    if name in TASKS and TASKS.get(name).kind != "custom":
        raise TaskError(f"task name {name!r} is a built-in task; pick another name")
    p = Path(path).expanduser().resolve()
    fmt = _detect_format(p)
    if fmt == "cgcnn" and (structure_column or id_column or target):
        raise TaskError("--target/--structure-column/--id-column apply to CSV/JSON tables, not to a CGCNN folder")
    if on_error not in ("raise", "skip"):
        raise TaskError("on_error: " + suggest(str(on_error), ["raise", "skip"], "mode"))
    src = CustomSource(str(p), fmt, target, structure_column, id_column, skip_bad=on_error == "skip")
    if fmt != "cgcnn":
        src = resolve_columns(src, _table_rows(src)[0])
    reg = registry_path(data_dir)
    doc = _read_registry(reg)
    if name in doc["tasks"] and not overwrite and doc["tasks"][name].get("path") != str(p):
        raise TaskError(f"custom task {name!r} already exists in {reg} (for {doc['tasks'][name]['path']}); "
                        "use --overwrite to replace it")
    rec = {**{k: v for k, v in asdict(src).items()}, "unit": unit, "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    task = _task_from_record(name, rec)
    data = load_custom_task(task, data_dir, on_error, registering=True)  # fails here, before anything is written
    doc["tasks"][name] = rec
    paths.atomic_write_text(reg, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if name in TASKS:
        TASKS._remove(name)
    TASKS.add(name, task, description=_desc(rec), source=str(reg))
    return data

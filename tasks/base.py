"""Tasks: a dataset, a target, a unit and a train/val/test split; loading them into ``TaskData``.

The nine built-in tasks are the JARVIS-Leaderboard single-property benchmarks (Choudhary et al., "JARVIS-Leaderboard:
a large scale benchmark of materials design methods", npj Comput. Mater. 10, 93 (2024)) on JARVIS-DFT 3D 2021
(Choudhary et al., npj Comput. Mater. 6, 173 (2020)) and the MP 2018.6.1 "megnet" set (Chen et al., Chem. Mater. 31,
3564 (2019)), with the leaderboard's official id lists. Where no official list exists we use ALIGNN's seed-123 rule
(Choudhary & DeCost, npj Comput. Mater. 7, 185 (2021), ``get_id_train_val_test``), see ``seed123_split``.

Conventions (see docs/ARCHITECTURE.md and ../shared/spec/protocol.md):

* One entry per id. ``TaskData.structures/targets/ids`` hold exactly the entries of this task's splits, in dataset
  row order (a duplicated id keeps its first row). ``splits`` index into these lists.
* An id listed in two official splits is kept in the later of test > val > train only: test stays exactly the
  official test list (comparable with published numbers), val loses ids that are also in test, train loses ids
  that are also in val or test (no train/evaluation leakage).
* ``dataset_key`` identifies exactly the ``structures`` list (source file content + sample flag + which entries in
  which order), so a graph cache keyed by it can never be stale.
* Label fractions are nested, seeded subsets of the training split only.
"""

from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.cli import UserError
from bench.registry import TASKS, register_task  # noqa: F401  (register_task re-exported)

SPLITS = ("train", "val", "test")
SPLIT_PRIORITY = ("test", "val", "train")  # an id in two official lists stays in the first of these


class TaskError(UserError, ValueError):
    """A task that cannot be loaded as asked (bad entry, bad option, target missing from the source). A
    ``bench.cli.UserError``, so every command prints it without a traceback."""


@dataclass(frozen=True)
class Task:
    """A benchmark task: which dataset, which id and target keys, the unit and where the split comes from."""

    name: str
    dataset: str  # jarvis-tools dataset name ("dft_3d_2021", "megnet") or "custom"
    id_key: str
    target_key: str
    unit: str
    split_source: str  # "official" (list shipped in tasks/splits/) or "seed123" (ALIGNN's rule)
    kind: str = "jarvis"  # which loader reads it: "jarvis" (jarvis-tools dataset) or "custom"
    description: str = ""
    official_sizes: tuple[int, int, int] | None = None  # train/val/test as published
    subset_note: str = ""  # set when the offline copy holds only part of the official split
    spec: Any = None  # loader-specific (custom: a CustomSource)

    def describe(self) -> dict:
        d = {
            "dataset": self.dataset,
            "id_key": self.id_key,
            "target": self.target_key,
            "unit": self.unit,
            "split_source": (
                f"official JARVIS-Leaderboard id list (tasks/splits/{self.name}.json.gz)"
                if self.split_source == "official"
                else "ALIGNN seed-123 rule (80/10/10)"
            ),
            "kind": self.kind,
        }
        if self.official_sizes:
            d["official_sizes"] = dict(zip(SPLITS, self.official_sizes))
        if self.subset_note:
            d["subset"] = self.subset_note
        if self.spec is not None and hasattr(self.spec, "describe"):
            d.update(self.spec.describe())
        return d


@dataclass
class TaskData:
    """A loaded task. ``splits`` map "train"/"val"/"test" to int64 index arrays into the entry lists."""

    task: str
    structures: list
    targets: np.ndarray
    ids: list[str]
    splits: dict[str, np.ndarray]
    dataset_key: str
    source: str
    unit: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) left out by on_error="skip"
    notes: list[str] = field(default_factory=list)
    # Names the evaluation protocol (data + split + limits) independently of the run seed: equal to dataset_key
    # for a full task; for ``limited`` it names the parent task, the limits and the fixed val/test subsets but
    # not the seeded training draw, so runs with different seeds can share a leaderboard table.
    protocol_key: str = ""

    def __post_init__(self) -> None:
        if not self.protocol_key:
            self.protocol_key = self.dataset_key

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def sizes(self) -> dict[str, int]:
        return {k: int(len(v)) for k, v in self.splits.items()}

    def split(self, name: str) -> tuple[list, np.ndarray]:
        """(structures, targets) of one split."""
        if name not in self.splits:
            from bench.registry import suggest

            raise TaskError(suggest(name, list(self.splits), "split"))
        idx = self.splits[name]
        return [self.structures[i] for i in idx], self.targets[idx]

    def select(self, splits: dict[str, np.ndarray], note: str = "") -> "TaskData":
        """A compact TaskData holding only the entries used by ``splits`` (indices into this one)."""
        used = np.unique(np.concatenate([np.asarray(v, dtype=np.int64) for v in splits.values()] or [[]]))
        remap = np.full(len(self.ids), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        ids = [self.ids[i] for i in used]
        key = _with_selection(self.dataset_key.split("~")[0], ids)
        return replace(
            self,
            protocol_key=key,
            structures=[self.structures[i] for i in used],
            targets=self.targets[used].copy(),
            ids=ids,
            splits={k: remap[np.asarray(v, dtype=np.int64)] for k, v in splits.items()},
            dataset_key=key,
            notes=self.notes + ([note] if note else []),
        )

    def limited(
        self, train: int | None = None, val: int | None = None, test: int | None = None, seed: int = 0
    ) -> "TaskData":
        """Stated subsets of the official splits (the quick suite). ``seed`` draws the training subset only;
        the val/test subsets are fixed (seed 0) so every run of a suite is evaluated on the same entries."""
        new = {}
        for name, n, s in (("train", train, seed), ("val", val, 0), ("test", test, 0)):
            idx = self.splits[name]
            new[name] = idx if n is None else subset(idx, n, s, option=f"{name} limit")
        note = (
            f"limited to train {len(new['train'])}/{len(self.splits['train'])} (seed {seed}), "
            f"val {len(new['val'])}/{len(self.splits['val'])}, test {len(new['test'])}/{len(self.splits['test'])} "
            "(val/test subsets fixed)"
        )
        out = self.select(new, note)
        out.source = f"{self.source}; {note}"
        fixed = hashlib.sha1(
            "\n".join(self.ids[i] for k in ("val", "test") for i in new[k]).encode()
        ).hexdigest()[:8]
        out.protocol_key = (f"{self.protocol_key}~limited(train={len(new['train'])},val={len(new['val'])},"
                            f"test={len(new['test'])})-{fixed}")
        return out

    def summary(self) -> dict:
        return {"task": self.task, "source": self.source, "unit": self.unit, "sizes": self.sizes,
                "dataset_key": self.dataset_key, "protocol_key": self.protocol_key, "skipped": len(self.skipped), "notes": list(self.notes)}


# ---- split helpers -------------------------------------------------------------------------------------


def seed123_split(n: int) -> dict[str, np.ndarray]:
    """ALIGNN's rule for n entries with a value, in dataset order: random.seed(123); shuffle range(n);
    train = first int(0.8 n), test = last int(0.1 n), val = the int(0.1 n) before test. Leftovers are in no split.
    Returns positions (0..n-1) in shuffled order."""
    ids = list(range(n))
    rng_state = random.getstate()
    try:
        random.seed(123)
        random.shuffle(ids)
    finally:
        random.setstate(rng_state)  # don't disturb anyone else's use of the global RNG
    n_train = int(0.8 * n)
    n_10 = int(0.1 * n)
    train = ids[:n_train]
    val = ids[-2 * n_10 : -n_10] if n_10 else []
    test = ids[-n_10:] if n_10 else []
    return {k: np.asarray(v, dtype=np.int64) for k, v in (("train", train), ("val", val), ("test", test))}


def _check_fraction(fraction: float, option: str) -> float:
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise TaskError(f"{option} must be a number in (0, 1], got {fraction!r}") from None
    if not (0.0 < f <= 1.0) or not np.isfinite(f):
        raise TaskError(f"{option} must be in (0, 1] (a fraction of the training split), got {fraction!r}")
    return f


def _perm(n: int, seed: int) -> np.ndarray:
    # One permutation per (n, seed): every subset size is a prefix of it, hence nested subsets.
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED])).permutation(n)


def label_fraction(train_idx, fraction: float, seed: int, *, option: str = "--fraction") -> np.ndarray:
    """A seeded subset of the training split with round(fraction * n) entries (at least 1), nested over
    fractions for the same seed (the 0.25 subset lies inside the 0.5 one). Order follows ``train_idx``."""
    f = _check_fraction(fraction, option)
    idx = np.asarray(train_idx, dtype=np.int64)
    if len(idx) == 0:
        raise TaskError("the training split is empty; cannot take a label fraction of it")
    if f == 1.0:
        return idx.copy()
    k = max(1, int(round(f * len(idx))))
    return idx[np.sort(_perm(len(idx), seed)[:k])]


def subset(idx, n: int, seed: int, *, option: str = "subset size") -> np.ndarray:
    """A seeded subset of ``idx`` with ``n`` entries (all of them if n >= len), nested over n for one seed."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise TaskError(f"{option} must be a positive integer, got {n!r}")
    idx = np.asarray(idx, dtype=np.int64)
    if n >= len(idx):
        return idx.copy()
    return idx[np.sort(_perm(len(idx), seed)[:n])]


def assign_official(
    ids: list[str], lists: dict[str, list[str]]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Map official id lists onto entry positions (``ids`` are unique). Ids in two lists go to the first of
    test > val > train. Returns (splits as positions, info with counts of missing and moved ids)."""
    pos = {i: k for k, i in enumerate(ids)}
    owner: dict[str, str] = {}
    for name in SPLIT_PRIORITY:
        for i in lists[name]:
            owner.setdefault(i, name)
    splits: dict[str, list[int]] = {k: [] for k in SPLITS}
    missing = {k: 0 for k in SPLITS}
    moved: list[tuple[str, str, str]] = []
    for name in SPLITS:
        seen = set()
        for i in lists[name]:
            if i in seen:
                continue
            seen.add(i)
            p = pos.get(i)
            if owner[i] != name:
                if p is not None:
                    moved.append((i, name, owner[i]))
                continue
            if p is None:
                missing[name] += 1
            else:
                splits[name].append(p)
    out = {k: np.asarray(sorted(v), dtype=np.int64) for k, v in splits.items()}
    return out, {"missing": missing, "in_two_splits": moved}


def _with_selection(base: str, ids: list[str]) -> str:
    h = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]
    return f"{base}~{len(ids)}-{h}"


def notice(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr)


def cached_arrays(cache: Path, build: Callable[[], dict[str, np.ndarray]], source: object) -> dict[str, np.ndarray]:
    """Arrays of a parsed data file: read from the npz ``cache`` (never pickled), else ``build()`` them and write
    the cache atomically. A corrupt cache is rebuilt, never trusted."""
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:
            notice(f"ignoring unreadable parse cache {cache} ({type(e).__name__}: {e})")
    notice(f"parsing {source} (once; cached as {cache})")
    arrays = build()
    from bench import paths

    with paths.atomic_path(cache) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return arrays


# ---- loading ------------------------------------------------------------------------------------------

# kind -> loader(task, data_dir, on_error) -> TaskData; jarvis.py and custom.py add theirs.
LOADERS: dict[str, Callable[..., TaskData]] = {}


def get_task(name: str, data_dir=None) -> Task:
    """The registered task; an unknown name also looks in ``<data_dir>/custom_tasks.json``."""
    if name not in TASKS:
        from bench.tasks.custom import register_custom_tasks

        register_custom_tasks(data_dir, quiet=True)
    return TASKS.get(name)


def load_task(name: str, data_dir=None, *, on_error: str = "raise") -> TaskData:
    """Load a registered task. ``data_dir``: a directory holding the jarvis-tools files (``--data-dir``; default
    BENCH_DATA_DIR, else the user cache, else the bundled sample), or "sample" to force the bundled sample.
    ``on_error``: "raise" (an entry without a usable target or structure is an error naming it) or "skip"
    (leave it out, count it in ``TaskData.skipped`` and say so on stderr)."""
    if on_error not in ("raise", "skip"):
        from bench.registry import suggest

        raise TaskError("on_error: " + suggest(str(on_error), ["raise", "skip"], "mode"))
    task = get_task(name, data_dir)
    loader = LOADERS.get(task.kind)
    if loader is None:
        raise TaskError(f"task {name!r}: no loader for kind {task.kind!r} (have {sorted(LOADERS)})")
    data = loader(task, data_dir, on_error)
    if data.skipped and (name, data.dataset_key) not in _SKIP_NOTICED:
        # once per process: a sweep loads each task once per planned trial
        _SKIP_NOTICED.add((name, data.dataset_key))
        why = "registered with --skip-bad" if getattr(task.spec, "skip_bad", False) else "on_error='skip'"
        notice(f"task {name}: skipped {len(data.skipped)} bad entries ({why}), e.g. "
               + "; ".join(f"{i}: {r}" for i, r in data.skipped[:3]))
    return data


_SKIP_NOTICED: set[tuple[str, str]] = set()

"""The unlabeled pretraining corpus: JARVIS-DFT 3D 2021 + the MP 2018.6.1 subset + CDVAE perov_5 and carbon_24
structures (Xie et al., "Crystal Diffusion Variational Autoencoder", ICLR 2022), with the leakage rule of
../shared/spec/protocol.md: by default every structure in the validation and test splits of the evaluated tasks is
left out (matched by id within the same dataset; ``info`` records the rule, the counts and the final size).

perov5/carbon24 are the jarvis_leaderboard AtomGen files (POSCAR strings with literal "\\n"), looked up at
``<data dir>/../unlabeled/`` or ``<data dir>/unlabeled/``. They are not evaluation tasks here, so all their
structures (CDVAE train/val/test alike) may be used.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import paths
from bench.registry import suggest
from bench.structures import Structure, StructureError
from bench.tasks.base import SPLITS, TaskError, cached_arrays, load_task, notice
from bench.tasks.jarvis import DATASETS, official_lists, parsed_dataset

UNLABELED = {"perov5": "perov5_heat_ref.json.zip", "carbon24": "carbon24_energy_per_atom.json.zip"}
ALL_SOURCES = ("dft_3d_2021", "megnet", "perov5", "carbon24")
KNOWN_SOURCES = ALL_SOURCES + ("sample",)
BUILTIN_TASKS = (
    "dft_3d_formation_energy_peratom", "dft_3d_optb88vdw_bandgap", "dft_3d_optb88vdw_total_energy",
    "dft_3d_mbj_bandgap", "dft_3d_ehull", "dft_3d_bulk_modulus_kv", "dft_3d_shear_modulus_gv",
    "megnet_e_form", "megnet_gappbe",
)
LEAKAGE_RULE = ("structures in the validation or test split of any excluded task are left out, matched by id within "
                "the task's dataset (jid for dft_3d_2021, mp-id for megnet); an id in several splits counts as "
                "val/test")
_PARSE_VERSION = "1"
STRUCTURE_MATCH_TOL = 0.02
STRUCTURE_RULE = ("structure matching: same reduced composition, same space group (spglib, symprec 0.1 Å) and "
                  "volume per atom within 2 % as a val/test structure (custom tasks always; built-in tasks unless "
                  "match_structures=False, ids only)")
SYMPREC = 0.1


class _SpaceGroups:
    """spglib's space group of a structure at SYMPREC (loose enough for the same crystal relaxed by another
    functional, JARVIS OptB88vdW vs MP PBE), memoised on disk by the structure's content: classifying the ~10k
    candidates of the full corpus takes about a minute on one core, and every sweep start loads the corpus."""

    def __init__(self) -> None:
        self.path = paths.cache_dir() / "datasets" / f"spacegroups-symprec{SYMPREC:g}-v1.json"
        self._known: dict[str, str | None] | None = None
        self._new = 0

    def __call__(self, s: Structure) -> str | None:
        if self._known is None:
            try:
                self._known = json.loads(self.path.read_text()) if self.path.is_file() else {}
            except (OSError, ValueError):  # an unreadable memo is rebuilt
                self._known = {}
        h = hashlib.sha1()
        for a in (np.asarray(s.lattice, dtype=np.float64), np.asarray(s.frac, dtype=np.float64),
                  np.asarray(s.numbers, dtype=np.int64)):
            h.update(a.tobytes())
        key = h.hexdigest()
        if key not in self._known:
            import os

            os.environ.setdefault("SPGLIB_WARNING", "OFF")  # its C warnings on degenerate cells are noise here
            import warnings

            import spglib

            try:
                with warnings.catch_warnings():  # spglib 2.x warns about its error-handling mode on every call
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._known[key] = spglib.get_spacegroup((s.lattice, s.frac, s.numbers), symprec=SYMPREC)
            except Exception:  # spglib raises on degenerate cells: no answer, which counts as a match
                self._known[key] = None
            self._new += 1
        return self._known[key]

    def save(self) -> None:
        if self._new and self._known is not None:
            with paths.atomic_path(self.path) as tmp:
                Path(tmp).write_text(json.dumps(self._known))
            self._new = 0


class _Matcher:
    """The same crystal under another id (or as a supercell): reduced composition + volume per atom within
    ``tol``, confirmed by the space group, so that a polymorph of similar density is not taken for a copy (on the
    full data, 25 % of the MP and 53 % of the JARVIS composition + volume matches of the formation-energy val/test
    structures have another space group). The space group is computed only for structures that pass the cheap
    test; a structure spglib cannot classify matches (errs on the side of no leakage)."""

    def __init__(self, tol: float) -> None:
        self.tol = tol
        self._by_comp: dict[tuple, list[list]] = {}  # key -> [[volume per atom, structure, space group]]
        self.space_group = _SpaceGroups()

    @staticmethod
    def _key(s: Structure) -> tuple:
        z, c = np.unique(s.numbers, return_counts=True)
        g = int(np.gcd.reduce(c))
        return tuple(zip(z.tolist(), (c // g).tolist()))

    def add(self, s: Structure) -> None:
        self._by_comp.setdefault(self._key(s), []).append([s.volume / s.num_atoms, s, False])

    def match(self, s: Structure) -> bool:
        if not self._by_comp:
            return False
        refs = self._by_comp.get(self._key(s))
        if not refs:
            return False
        v = s.volume / s.num_atoms
        close = [r for r in refs if abs(v - r[0]) <= self.tol * r[0]]
        if not close:
            return False
        sg = self.space_group(s)
        for r in close:
            if r[2] is False:  # computed once per reference structure, when first needed
                r[2] = self.space_group(r[1])
            if sg is None or r[2] is None or r[2] == sg:
                return True
        return False

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_comp.values())


@dataclass
class Corpus:
    structures: list[Structure]
    ids: list[str]  # "<source>:<id>", unique
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def key(self) -> str:
        """Identity of exactly this structure list (for graph caches)."""
        h = hashlib.sha1(json.dumps(self.info.get("source_keys", {}), sort_keys=True).encode())
        h.update("\n".join(self.ids).encode())
        return f"corpus-{len(self.ids)}-{h.hexdigest()[:16]}"


def unlabeled_file(source: str, data_dir=None) -> Path | None:
    base = paths.data_dir(data_dir) if str(data_dir) != "sample" else None
    if base is None:
        return None
    for cand in (base.parent / "unlabeled" / UNLABELED[source], base / "unlabeled" / UNLABELED[source]):
        if cand.is_file():
            return cand
    return None


def _load_unlabeled(source: str, path: Path) -> tuple[list[Structure], list[str]]:
    """POSCARs of a CDVAE AtomGen file, parsed once and cached (npz) keyed by the file hash."""
    raw = path.read_bytes()
    digest = hashlib.sha1(raw).hexdigest()
    cache = paths.cache_dir() / "datasets" / f"{source}-{len(raw)}-{digest[:16]}-v{_PARSE_VERSION}.npz"

    def build() -> dict[str, np.ndarray]:
        with zipfile.ZipFile(path) as z:
            doc = json.loads(z.read(z.namelist()[0]))
        ids, natoms, nums, frac, lat = [], [], [], [], []
        for split in SPLITS:
            for i, poscar in doc.get(split, {}).items():
                s = _poscar(poscar.replace("\\n", "\n"), f"{source}:{i}")
                ids.append(f"{split}/{i}")
                natoms.append(s.num_atoms)
                nums.append(s.numbers)
                frac.append(s.frac)
                lat.append(s.lattice)
        return {"ids": np.asarray(ids), "natoms": np.asarray(natoms, dtype=np.int64),
                "numbers": np.concatenate(nums).astype(np.int16), "frac": np.concatenate(frac),
                "lattice": np.asarray(lat).reshape(-1, 3, 3)}

    arrays = cached_arrays(cache, build, path)
    off = np.concatenate([[0], np.cumsum(arrays["natoms"])])
    ids = [str(i) for i in arrays["ids"]]
    structs = [Structure(arrays["lattice"][k], arrays["frac"][off[k]:off[k + 1]],
                         arrays["numbers"][off[k]:off[k + 1]].astype(np.int64), id=f"{source}:{ids[k]}")
               for k in range(len(ids))]
    return structs, ids


def _poscar(text: str, entry: str) -> Structure:
    """Plain VASP-5 POSCAR reader (these files are simple: title, scale, 3 lattice rows, symbols, counts,
    direct/cartesian, coordinates). Faster than going through jarvis-tools for 29k structures."""
    lines = [ln.strip() for ln in text.strip("\n").split("\n")]
    try:
        scale = float(lines[1])
        lat = np.array([[float(x) for x in lines[k].split()[:3]] for k in (2, 3, 4)]) * scale
        symbols = lines[5].split()
        counts = [int(x) for x in lines[6].split()]
        mode = lines[7].lower()
        n = sum(counts)
        coords = np.array([[float(x) for x in lines[8 + k].split()[:3]] for k in range(n)])
    except (IndexError, ValueError) as e:
        raise StructureError(f"entry {entry}: cannot parse POSCAR ({type(e).__name__}: {e})") from None
    elements = [s for s, c in zip(symbols, counts) for _ in range(c)]
    return Structure.from_jarvis(
        {"lattice_mat": lat, "coords": coords, "elements": elements, "cartesian": mode.startswith(("c", "k"))},
        entry,
    )


def load_corpus(
    sources=ALL_SOURCES,
    exclude_tasks=None,
    data_dir=None,
    limit: int | None = None,
    seed: int = 0,
    match_structures: bool = True,
) -> Corpus:
    """Unlabeled structures for pretraining. ``exclude_tasks``: task names whose val/test structures are left out
    (None = all nine built-in tasks, the safe default; [] = exclude nothing). ``sources=("sample",)`` uses the
    bundled sample. ``limit``: a seeded subset of that size after exclusion. Val/test structures of custom tasks
    (whose ids mean nothing here), and of every excluded task unless ``match_structures=False`` (ids only), are
    also matched by structure: same reduced composition and volume per atom within 2 %, in every source (this
    catches, e.g., the MP copy of a JARVIS test crystal). ``info["per_source"][src]["excluded_by_structure"]``
    counts the structures only the matching left out."""
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    for s in sources:
        if s not in KNOWN_SOURCES:
            raise TaskError("corpus: " + suggest(s, list(KNOWN_SOURCES), "source"))
    if "sample" in sources and len(sources) > 1:
        raise TaskError("corpus: 'sample' stands alone (it is the bundled sample of dft_3d_2021 and megnet)")
    use_sample = sources == ("sample",)
    if use_sample:
        sources, data_dir = ("dft_3d_2021", "megnet"), "sample"
    exclude_tasks = list(BUILTIN_TASKS) if exclude_tasks is None else list(exclude_tasks)

    # ids to leave out, per dataset; structures to match for tasks whose ids mean nothing in the corpus sources
    excl_ids: dict[str, set[str]] = {}
    matcher = _Matcher(STRUCTURE_MATCH_TOL)
    for t in exclude_tasks:
        from bench.tasks.base import get_task

        task = get_task(t, None if use_sample else data_dir)
        if task.kind == "jarvis":
            lists = official_lists(task.name)
            excl_ids.setdefault(task.dataset, set()).update(lists["val"], lists["test"])
        if task.kind != "jarvis" or match_structures:
            # the bundled sample's own copy of a JARVIS task (said once by the corpus, not once per task)
            where = ("sample" if task.kind == "jarvis" else None) if use_sample else data_dir
            data = load_task(t, data_dir=where, on_error="skip")
            for k in ("val", "test"):
                for i in data.splits[k]:
                    matcher.add(data.structures[i])

    structures: list[Structure] = []
    ids: list[str] = []
    per_source: dict[str, dict] = {}
    found, missing = [], []
    source_keys = {}
    for src in sources:
        if src in DATASETS:
            p = parsed_dataset(src, data_dir)
            drop = excl_ids.get(src, set())
            all_s = p.structures()
            keep, by_structure = [], 0
            for k, i in enumerate(p.ids):
                if all_s[k] is None or i in drop:
                    continue
                if matcher.match(all_s[k]):
                    by_structure += 1
                else:
                    keep.append(k)
            structures += [all_s[k] for k in keep]
            ids += [f"{src}:{p.ids[k]}" for k in keep]
            per_source[src] = {"file": "bundled sample" if p.is_sample else str(p.path), "entries": len(p.ids),
                               "excluded": len(p.ids) - len(keep) - sum(map(bool, p.errors)),
                               "excluded_by_structure": by_structure,
                               "unreadable": sum(map(bool, p.errors)), "kept": len(keep)}
            source_keys[src] = p.key
            found.append(src + (" (bundled sample)" if p.is_sample else ""))
        else:
            path = unlabeled_file(src, data_dir)
            if path is None:
                missing.append(src)
                continue
            s_list, s_ids = _load_unlabeled(src, path)
            keep = [k for k, st in enumerate(s_list) if not matcher.match(st)]
            structures += [s_list[k] for k in keep]
            ids += [f"{src}:{s_ids[k]}" for k in keep]
            per_source[src] = {"file": str(path), "entries": len(s_ids), "excluded": len(s_ids) - len(keep),
                               "excluded_by_structure": len(s_ids) - len(keep), "kept": len(keep)}
            source_keys[src] = f"{src}-{path.stat().st_size}"
            found.append(src)
    if missing:
        base = paths.data_dir(data_dir) if data_dir != "sample" else "(sample)"
        notice(f"corpus: sources not found and left out: {', '.join(missing)} (looked in {base}/../unlabeled and "
               f"{base}/unlabeled)")
    matcher.space_group.save()
    if not structures:
        raise TaskError("corpus: no structures (no source found)")
    n_before_limit = len(structures)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise TaskError(f"corpus limit must be a positive integer, got {limit!r}")
        if limit < len(structures):
            pick = np.sort(np.random.default_rng(seed).permutation(len(structures))[:limit])
            structures = [structures[k] for k in pick]
            ids = [ids[k] for k in pick]
    info = {
        "sources_requested": list(sources) if not use_sample else ["sample"],
        "sources_found": found,
        "sources_missing": missing,
        "exclude_tasks": exclude_tasks,
        "match_structures": bool(match_structures),
        "leakage_rule": (LEAKAGE_RULE + (f"; plus {STRUCTURE_RULE} ({len(matcher)} reference structures)"
                                          if len(matcher) else "")) if exclude_tasks else "none (exclude_tasks=[]): val/test structures may be in the corpus",
        "excluded": sum(v["excluded"] for v in per_source.values()),
        "per_source": per_source,
        "size_before_limit": n_before_limit,
        "limit": limit,
        "seed": seed,
        "size": len(structures),
        "source_keys": source_keys,
    }
    return Corpus(structures, ids, info)

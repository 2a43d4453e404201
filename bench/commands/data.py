"""``bench data info TASK`` (source, split sizes, target statistics, element coverage, atoms per structure),
``bench data add NAME PATH`` (register a user's own data set as a task) and ``bench data corpus`` (the pretraining
corpus after the leakage rule)."""

from __future__ import annotations

import json

import numpy as np


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="inspect tasks and data, register custom data")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    i = dsub.add_parser("info", help="source, split sizes, target statistics and element coverage of a task")
    i.add_argument("task")
    i.add_argument("--data-dir", default=None, help="folder with the jarvis-tools files, or 'sample'")
    i.add_argument("--skip-bad", action="store_true", help="leave out bad entries (counted) instead of failing")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=run_info, registry_names=(("task", "task"),))

    a = dsub.add_parser("add", help="register a CGCNN folder or a CSV/JSON table as task NAME")
    a.add_argument("name")
    a.add_argument("path", help="CGCNN folder (id_prop.csv + <id>.cif) or .csv/.json table")
    a.add_argument("--target", default=None, help="target column (CSV/JSON)")
    a.add_argument("--structure-column", default=None, help="column with CIF/POSCAR text or a jarvis atoms dict")
    a.add_argument("--id-column", default=None, help="id column (default: id/jid/material_id, else row number)")
    a.add_argument("--unit", default="", help="unit of the target, e.g. eV/atom")
    a.add_argument("--data-dir", default=None, help="where custom_tasks.json lives (default: BENCH_DATA_DIR or user cache)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing task of that name")
    a.add_argument("--skip-bad", action="store_true",
                   help="register even if some entries are bad: they are left out and counted, and the choice is "
                        "stored with the task so bench train / bench run skip the same entries")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=run_add)

    c = dsub.add_parser("corpus", help="the unlabeled pretraining corpus after excluding val/test structures")
    c.add_argument("--sources", default="dft_3d_2021,megnet,perov5,carbon24",
                   help="comma list of dft_3d_2021, megnet, perov5, carbon24, or 'sample'")
    c.add_argument("--exclude-tasks", default=None,
                   help="comma list of tasks whose val/test structures are left out (default: all nine built-in; "
                        "'none' for no exclusion)")
    c.add_argument("--data-dir", default=None)
    c.add_argument("--limit", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--match-structures", action="store_true",
                   help="also leave out structures matching a val/test structure (composition, space group, "
                        "volume/atom) in "
                        "any source, e.g. a JARVIS test crystal present in MP (the default)")
    c.add_argument("--ids-only", action="store_true",
                   help="leave out val/test structures by id only (no structure matching)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run_corpus)


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return {"n": 0}
    return {"n": int(len(x)), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "max": float(x.max()), "mad": float(np.abs(x - x.mean()).mean())}


def task_info(data) -> dict:
    from bench.structures import ELEMENTS

    used = np.unique(np.concatenate([data.splits[k] for k in data.splits]))
    z = np.unique(np.concatenate([data.structures[i].numbers for i in used])) if len(used) else np.zeros(0, int)
    natoms = np.array([data.structures[i].num_atoms for i in used])
    y = data.targets
    tr, te = data.splits["train"], data.splits["test"]
    info = {
        "task": data.task,
        "source": data.source,
        "unit": data.unit,
        "dataset_key": data.dataset_key,
        "sizes": data.sizes,
        "skipped": len(data.skipped),
        "target": {"all": _stats(y[used]), **{k: _stats(y[v]) for k, v in data.splits.items()}},
        # MAE of predicting the training mean on the test split: the floor any model must beat
        "test_mae_of_train_mean": float(np.abs(y[te] - y[tr].mean()).mean()) if len(tr) and len(te) else None,
        "elements": {"count": int(len(z)), "symbols": [ELEMENTS[int(i)] for i in z]},
        "atoms_per_structure": {"min": int(natoms.min()), "mean": float(natoms.mean()),
                                "median": float(np.median(natoms)), "max": int(natoms.max())} if len(natoms) else {},
        "notes": list(data.notes),
    }
    if data.skipped:
        info["skipped_examples"] = [f"{i}: {r}" for i, r in data.skipped[:10]]
        info["skipped_entries"] = [{"id": i, "reason": r} for i, r in data.skipped]  # all of them
    return info


def _print_info(info: dict) -> None:
    from tabulate import tabulate

    print(f"task:    {info['task']}  ({info['unit']})")
    print(f"source:  {info['source']}")
    print(f"key:     {info['dataset_key']}")
    print("sizes:   " + ", ".join(f"{k} {v}" for k, v in info["sizes"].items())
          + (f"  (skipped {info['skipped']})" if info["skipped"] else ""))
    rows = [[k] + [s.get(c) for c in ("n", "mean", "std", "min", "max", "mad")] for k, s in info["target"].items()]
    print(tabulate(rows, headers=["target", "n", "mean", "std", "min", "max", "MAD"], floatfmt=".4g"))
    if info["test_mae_of_train_mean"] is not None:
        print(f"test MAE of predicting the train mean: {info['test_mae_of_train_mean']:.4g} {info['unit']}")
    el = info["elements"]
    print(f"elements: {el['count']}: {' '.join(el['symbols'])}")
    a = info["atoms_per_structure"]
    if a:
        print(f"atoms per structure: min {a['min']}, mean {a['mean']:.1f}, median {a['median']:.0f}, max {a['max']}")
    for n in info["notes"]:
        print(f"note: {n}")
    for s in info.get("skipped_examples", []):
        print(f"skipped: {s}")
    if info["skipped"] > len(info.get("skipped_examples", [])):
        print(f"skipped: and {info['skipped'] - len(info['skipped_examples'])} more (--json lists all)")


def run_info(args) -> int:
    from bench.tasks import load_task

    data = load_task(args.task, args.data_dir, on_error="skip" if args.skip_bad else "raise")
    info = task_info(data)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def run_add(args) -> int:
    from bench.tasks.custom import add_custom_task, registry_path

    data = add_custom_task(
        args.name, args.path, target=args.target, structure_column=args.structure_column, id_column=args.id_column,
        unit=args.unit, data_dir=args.data_dir, overwrite=args.overwrite,
        on_error="skip" if args.skip_bad else "raise",
    )
    info = task_info(data)
    info["registry"] = str(registry_path(args.data_dir))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"registered task {args.name!r} in {info['registry']}")
        _print_info(info)
    return 0


def run_corpus(args) -> int:
    from bench.tasks.corpus import load_corpus

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    if args.exclude_tasks is None:
        excl = None
    elif args.exclude_tasks.strip().lower() == "none":
        excl = []
    else:
        excl = [t.strip() for t in args.exclude_tasks.split(",") if t.strip()]
    c = load_corpus(sources, exclude_tasks=excl, data_dir=args.data_dir, limit=args.limit, seed=args.seed,
                    match_structures=not args.ids_only)
    info = dict(c.info, key=c.key)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"corpus: {info['size']} structures (key {c.key})")
        print(f"sources found: {', '.join(info['sources_found']) or 'none'}; missing: "
              f"{', '.join(info['sources_missing']) or 'none'}")
        for s, v in info["per_source"].items():
            print(f"  {s}: {v['kept']} kept of {v['entries']} ({v['excluded']} excluded) from {v['file']}")
        print(f"leakage rule: {info['leakage_rule']}")
        print(f"excluded tasks: {', '.join(info['exclude_tasks']) or 'none'}")
    return 0

"""``bench list {tasks,encoders,objectives,featurizers} [PATTERN] [--json]``"""

from __future__ import annotations

import fnmatch
import json

from bench import registry

_KINDS = {
    "tasks": registry.TASKS,
    "encoders": registry.ENCODERS,
    "objectives": registry.OBJECTIVES,
    "featurizers": registry.FEATURIZERS,
    "graph-specs": registry.GRAPH_SPECS,
}


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list registered components")
    p.add_argument("kind", choices=sorted(_KINDS))
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch wildcard, e.g. '*gcnn*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    reg = _KINDS[args.kind]
    rows = []
    for e in reg.entries():
        base = {"name": e.name, "version": e.version, "description": e.description, "source": e.source}
        variants = getattr(e.obj, "variants", None)  # a family listed one row per member (published:<name>)
        if callable(variants):
            rows += [{**base, **v} for v in variants()
                     if fnmatch.fnmatchcase(v["name"], args.pattern) or fnmatch.fnmatchcase(e.name, args.pattern)]
            continue
        if not fnmatch.fnmatchcase(e.name, args.pattern):
            continue
        describe = getattr(e.obj, "describe", None)
        if callable(describe):
            base.update(describe())
        rows.append(base)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        from tabulate import tabulate

        if args.kind == "featurizers":
            cols = ["name", "width", "elements", "missing (Z<=94)", "licence", "description"]
            body = [[r["name"], r.get("width"), r.get("elements"), _missing(r.get("missing_z_le_94", "")),
                     r.get("licence") or "", r["description"]] for r in rows]
            print(tabulate(body, headers=cols, maxcolwidths=[None, 12, 8, 24, 36, 48]))
            print("\n--json adds the paper, origin file and policy of each table.")
        else:
            cols = ["name", "version", "description"]
            print(tabulate([[r[c] for c in cols] for r in rows], headers=cols))
    return 0


def _missing(symbols: list[str] | str) -> str:
    if isinstance(symbols, str):  # "file's", or no description at all (a plugin's featurizer)
        return symbols
    return " ".join(symbols) if symbols else "none"

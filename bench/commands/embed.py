"""``bench embed {export,report,random}``: export a per-element table to CGCNN's atom_init.json, report on it
(coverage, cosines, nearest elements, PCA map) or on several side by side, or write the random control table."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("embed", help="export, inspect or generate per-element embedding tables", description=__doc__)
    esub = p.add_subparsers(dest="embed_command", metavar="ACTION")
    esub.required = True

    ex = esub.add_parser("export", help="write a table in another layout")
    ex.add_argument("table", help="table JSON, crysatom-published, published:<name> or random[:seed]")
    ex.add_argument("--format", choices=["atom_init"], default="atom_init",
                    help="atom_init: CGCNN layout {\"Z\": [floats]}")
    ex.add_argument("--out", required=True)
    ex.add_argument("--dim", type=int, help="width of a random table")
    ex.set_defaults(func=run_export)

    rp = esub.add_parser("report", help="coverage, cosine statistics, nearest elements, 2-D projection; several "
                         "tables: side by side")
    rp.add_argument("table", nargs="+", help="table JSON, crysatom-published, published:<name> or random[:seed]; "
                    "give several to compare them")
    rp.add_argument("--out", help="directory for report.json, report.md and projection.png (several tables: "
                    "compare.json, compare.md, compare.png)")
    rp.add_argument("--dim", type=int, help="width of a random table")
    rp.add_argument("--json", action="store_true", help="print the report as JSON")
    rp.set_defaults(func=run_report)

    rd = esub.add_parser("random", help="write the random control table (seeded unit vectors per element)")
    rd.add_argument("--dim", type=int, default=200)
    rd.add_argument("--seed", type=int, default=0)
    rd.add_argument("--out", required=True)
    rd.set_defaults(func=run_random)


def run_export(args) -> int:
    from bench.embed_report import export_atom_init, resolve_table

    t = resolve_table(args.table, args.dim)
    print(export_atom_init(t.vectors, args.out))
    return 0


def run_report(args) -> int:
    import json

    from bench.embed_report import compare, format_compare, format_report, report

    if len(args.table) > 1:
        if len(set(args.table)) != len(args.table):
            from bench.cli import UserError

            raise UserError(f"a table is given twice: {' '.join(args.table)}")
        rep = compare(args.table, args.out, args.dim)
        print(json.dumps(rep, indent=2) if args.json else format_compare(rep), end="")
        if args.out and not args.json:
            print(f"\nwrote {args.out}/compare.md, compare.json, compare.png")
        return 0
    rep = report(args.table[0], args.out, args.dim)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep), end="")
    if args.out and not args.json:
        print(f"\nwrote {args.out}/report.md, report.json, projection.png")
    return 0


def run_random(args) -> int:
    from bench.embeddings import save_table
    from bench.featurizers import random_vectors

    if args.dim < 1:
        from bench.cli import UserError

        raise UserError(f"--dim must be positive, got {args.dim}")
    vecs = random_vectors(args.dim, args.seed)
    save_table(args.out, vecs, {"kind": "random control", "dim": args.dim, "seed": args.seed,
                                "source": "bench.featurizers.random_vectors"})
    print(args.out)
    return 0

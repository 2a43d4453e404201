"""``bench graphs build --spec SPEC (--task TASK | --source PATH) [--limit N] [--data-dir D] [--workers W]
[--no-cache] [--skip-errors] [--json]``: build (and cache) the crystal graphs of a task, report sizes and speed."""

from __future__ import annotations

import json
import time


def add_parser(sub) -> None:
    p = sub.add_parser("graphs", help="build and cache crystal graphs")
    gsub = p.add_subparsers(dest="graphs_command", metavar="ACTION")
    gsub.required = True
    b = gsub.add_parser("build", help="build (and cache) the graphs of a task for one graph spec")
    b.add_argument("--spec", required=True, help="graph spec (see `bench list graph-specs`)")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="task name (see `bench list tasks`)")
    src.add_argument("--source", metavar="PATH",
                     help="a jarvis-style .json or .json.zip list of entries with an 'atoms' dict")
    b.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N structures")
    b.add_argument("--data-dir", default=None)
    b.add_argument("--workers", type=int, default=None, help="processes (default: all available cores)")
    b.add_argument("--no-cache", action="store_true", help="build without reading or writing the cache")
    b.add_argument("--skip-errors", action="store_true", help="leave out structures that fail (counted)")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b.set_defaults(func=run_build, registry_names=(("spec", "graph spec"), ("task", "task")))


def _load_source(path: str):
    """Structures of a jarvis-style JSON list (entries with ``atoms`` and ``jid``/``id``)."""
    import zipfile
    from pathlib import Path

    from bench.cli import UserError
    from bench.structures import Structure

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--source: no such file {path}")
    if p.suffix == ".zip":
        with zipfile.ZipFile(p) as z:
            names = [n for n in z.namelist() if n.endswith(".json")]
            if not names:
                raise UserError(f"--source {path}: the zip holds no .json member")
            rows = json.loads(z.read(names[0]))
    else:
        rows = json.loads(p.read_text())
    if not isinstance(rows, list):
        raise UserError(f"--source {path}: expected a JSON list of entries")
    out = []
    for k, row in enumerate(rows):
        if not isinstance(row, dict) or "atoms" not in row:
            raise UserError(f"--source {path}: entry {k} has no 'atoms' record")
        sid = str(row.get("jid", row.get("id", k)))
        out.append(Structure.from_jarvis(row["atoms"], sid))
    return out, f"source:{p.name}"


def run_build(args) -> int:
    from bench.cli import UserError
    from bench.graphs import get_spec, load_graphs, edge_summary

    spec = get_spec(args.spec)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.task:
        from bench.tasks import load_task

        data = load_task(args.task, args.data_dir)
        structures, key = list(data.structures), data.dataset_key
    else:
        structures, key = _load_source(args.source)
    if args.limit is not None:
        structures = structures[: args.limit]
    t0 = time.perf_counter()
    graphs = load_graphs(structures, spec, key, workers=args.workers, progress=not args.no_progress,
                         on_error="skip" if args.skip_errors else "raise", cache=not args.no_cache)
    dt = time.perf_counter() - t0
    summary = {"spec": spec.name, "task": args.task, "source": args.source, **edge_summary(graphs),
               "skipped": [{"index": i, "id": s, "reason": r} for i, s, r in graphs.skipped],
               "seconds": round(dt, 3), "structures_per_s": round(len(structures) / dt, 1) if dt > 0 else None}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"spec {spec.name}: {summary['structures']} structures, {summary['atoms']} atoms, "
              f"{summary['edges']} edges" + (f", {summary['line_graph_edges']} line-graph edges"
                                            if spec.line_graph else "")
              + f"; {dt:.2f} s ({summary['structures_per_s']} structures/s, cache hits included)")
        if graphs.skipped:
            print(f"skipped {len(graphs.skipped)}: " + ", ".join(f"{s} ({r})" for _, s, r in graphs.skipped[:10]))
    return 0

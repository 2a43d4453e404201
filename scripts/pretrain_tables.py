"""Pretrain a suite's objective tables into a store without starting the sweep, exactly as `bench run` would
(bench.sweep.pretrain_tables: the suite's budget, the leakage rule over its tasks, the table copied into
``<store>/tables/`` under its cache key, where a later `bench run --objective ...` on that store finds it).

    python scripts/pretrain_tables.py --suite reference-cpu --store leaderboard/reference-cpu \
        --data-dir ../shared/data/jarvis crysatom unate

One objective after another, so each table lands in the store as soon as it is made.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("objectives", nargs="+", help="registered objectives (bench list objectives)")
    ap.add_argument("--suite", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--encoder", default="cgcnn", help="only used to check the plan (tables do not depend on it)")
    ap.add_argument("--data-dir")
    ap.add_argument("--plugin", action="append", default=[], help="a plugin file or module, as bench --plugin")
    args = ap.parse_args()

    from bench.plugins import load_plugins
    from bench.sweep import SweepPlan, check_names, load_suite, pretrain_tables

    load_plugins(args.plugin)
    suite = load_suite(args.suite)
    check_names((args.encoder,), tuple(args.objectives), suite.tasks)
    for objective in args.objectives:
        plan = SweepPlan(suite=suite, encoders=(args.encoder,), objectives=(objective,), controls=False,
                         store=Path(args.store).expanduser().resolve(), plugins=tuple(args.plugin),
                         data_dir=args.data_dir)
        for name, path in pretrain_tables(plan).items():
            print(f"{name}: {path}", flush=True)
    return 0


if __name__ == "__main__":
    from bench.cli import UserError
    from bench.registry import RegistryError

    try:
        sys.exit(main())
    except (UserError, RegistryError) as e:  # a typo or a bad option: one line, as the bench command answers
        print(f"pretrain_tables: {e.args[0] if e.args else e}", file=sys.stderr)
        sys.exit(2)

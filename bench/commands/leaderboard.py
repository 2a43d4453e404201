"""``bench leaderboard``: rebuild the markdown leaderboard and plots from the store's run records alone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "leaderboard",
        help="rebuild the markdown leaderboard (and PNG plots) from run records; --check verifies it",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--store", default="runs/store", help="record store (the directory holding records/)")
    p.add_argument("--out", default=None,
                   help="output directory (default <store>/leaderboard, where `bench run --store` writes it)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the markdown in --out differs from what the records produce")
    p.add_argument("--no-plots", action="store_true", help="markdown only")
    p.set_defaults(func=main)


def default_out(store: str | Path) -> Path:
    """Where a store's leaderboard goes unless --out says otherwise; `bench run` and `bench leaderboard` share it,
    so `--check` compares against what `bench run` wrote (not ./leaderboard, the repository's committed one)."""
    return Path(store) / "leaderboard"


def main(args) -> int:
    from bench.cli import UserError
    from bench.leaderboard import LeaderboardError, check_leaderboard, write_leaderboard
    from bench.records import RecordError

    store = Path(args.store)
    out = Path(args.out) if args.out else default_out(store)
    if not (store / "records").is_dir():
        raise UserError(f"--store {store}: no records/ directory there (run `bench run --store {store}` first)")
    try:
        if args.check:
            problems = check_leaderboard(store, out)
            for p in problems:
                print(p, file=sys.stderr)
            if problems:
                print(f"leaderboard in {out} is out of date: run `bench leaderboard --store {store} "
                      f"--out {out}`", file=sys.stderr)
                return 1
            print(f"leaderboard in {out} matches the records in {store}")
            return 0
        written = write_leaderboard(store, out, plots=not args.no_plots)
    except (LeaderboardError, RecordError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {len(written)} file(s) to {out}")
    return 0

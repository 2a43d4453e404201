"""``bench run``: pretrain each objective once, sweep (task, encoder, featurizer, fraction, seed) on Ray Tune,
then rebuild the leaderboard from the store's records. Re-running skips runs already recorded."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="pretrain tables and run the benchmark sweep on Ray Tune (local or a cluster)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--suite", default="smoke", help="suite name (configs/suites/<name>.yaml) or a YAML path")
    p.add_argument("--encoder", required=True, help="encoder name(s), comma-separated (see `bench list`)")
    p.add_argument("--objective", default="", help="pretraining objective(s), comma-separated; empty: one-hot "
                   "(and controls) only")
    p.add_argument("--tasks", default=None, help="override the suite's tasks (comma-separated)")
    p.add_argument("--fractions", default=None, help="override label fractions, e.g. 0.1,0.25,0.5,1.0")
    p.add_argument("--seeds", default=None, help="override seeds, e.g. 0,1,2")
    p.add_argument("--epochs", type=int, default=None, help="override training epochs")
    p.add_argument("--features", default=None,
                   help="featurizer specs to compare, comma-separated (overrides the suite's featurizers, default "
                        "onehot), e.g. onehot,published:mat2vec,published:magpie; see `bench list featurizers`")
    p.add_argument("--controls", action="store_true",
                   help="also run the controls: random table (same width), crysatom-published, cgcnn")
    p.add_argument("--cpus-per-trial", type=float, default=None)
    p.add_argument("--gpus-per-trial", type=float, default=None, help="fractions allowed (e.g. 0.5)")
    p.add_argument("--address", default=None,
                   help="join an existing Ray cluster (host:port); default RAY_ADDRESS, else a local instance")
    p.add_argument("--store", default="runs/store", help="record store (must be visible to every node)")
    p.add_argument("--out", default=None, help="leaderboard directory (default <store>/leaderboard)")
    p.add_argument("--max-retries", type=int, default=2, help="retries per failed trial before it is reported")
    p.add_argument("--data-dir", default=None, help="data directory (overrides the suite's)")
    p.add_argument("--match-structures", action="store_true",
                   help="pretraining corpus: also leave out structures matching an evaluated val/test structure in "
                        "another source (same reduced composition and space group, volume per atom within 2%%), "
                        "not only its id (the default)")
    p.add_argument("--ids-only", action="store_true",
                   help="pretraining corpus: leave out the evaluated val/test structures by id only")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-leaderboard", action="store_true", help="do not rebuild the leaderboard afterwards")
    p.set_defaults(func=main, registry_names=(("encoder", "encoder"), ("objective", "objective"), ("tasks", "task")))


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def build_plan(args):
    """Parse and check every option; raises before anything heavy starts."""
    from bench.sweep import (SweepError, SweepPlan, check_address, check_featurizers, check_names, load_suite,
                             override, parse_list)

    if args.tasks is not None and not _names(args.tasks):
        raise SweepError("--tasks is empty: give task names, comma-separated")
    if getattr(args, "features", None) is not None and not _names(args.features):
        raise SweepError("--features is empty: give featurizer specs, comma-separated (e.g. onehot,published:mat2vec)")
    declared = load_suite(args.suite)
    suite = override(
        declared,
        tasks=_names(args.tasks) or None,
        featurizers=_names(getattr(args, "features", None)) or None,
        fractions=parse_list(args.fractions, float, "--fractions"),
        seeds=parse_list(args.seeds, int, "--seeds"),
        epochs=args.epochs,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        match_structures=False if args.ids_only else (True if args.match_structures else None),
    )
    encoders, objectives = _names(args.encoder), _names(args.objective)
    from bench.tasks.custom import register_custom_tasks

    # custom tasks registered in that data dir (`bench data add --data-dir`), as bench train finds them
    register_custom_tasks(args.data_dir if args.data_dir is not None else suite.data_dir, quiet=True)
    check_names(encoders, objectives, suite.tasks)
    check_featurizers(suite.featurizers)
    if args.max_retries < 0:
        raise SweepError(f"--max-retries must be >= 0, got {args.max_retries}")
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_address(address)
    return SweepPlan(
        suite=suite,
        encoders=encoders,
        objectives=objectives,
        controls=bool(args.controls),
        store=Path(args.store).expanduser().resolve(),
        plugins=tuple(getattr(args, "plugins", ()) or ()),
        max_retries=args.max_retries,
        address=address,
        device=args.device,
        data_dir=args.data_dir,
        also_exclude=declared.tasks,  # pretrain_config adds the ones --tasks dropped
    )


def main(args) -> int:
    from bench.cli import UserError
    from bench.sweep import SweepError, SweepInterrupted, run_sweep

    try:
        plan = build_plan(args)
    except SweepError as e:
        raise UserError(str(e)) from None
    s = plan.suite
    print(f"[sweep] suite {s.name}: {len(s.tasks)} task(s) x {len(plan.encoders)} encoder(s) x fractions "
          f"{list(s.fractions)} x seeds {list(s.seeds)}; store {plan.store}", file=sys.stderr)
    try:
        res = run_sweep(plan)
    except SweepError as e:
        raise UserError(str(e)) from None
    except SweepInterrupted as e:  # Ray is already shut down; no leaderboard from a partial sweep
        print(f"[sweep] {e}", file=sys.stderr)
        return e.exit_code
    busy = (f", {res.busy} left to another live sweep on this store (run the same command again after it ends)"
            if res.busy else "")
    print(f"[sweep] finished: {len(res.results)} trial(s) ran, {res.skipped} skipped (already recorded), "
          f"{len(res.failed)} failed{busy}", file=sys.stderr)
    for f in res.failed:
        c = f["config"]
        print(f"[sweep] FAILED {c.get('task')} {c.get('encoder')} {c.get('features_label')} "
              f"fraction={c.get('fraction')} seed={c.get('seed')}: {f['error']}", file=sys.stderr)
    if not args.no_leaderboard:
        from bench.commands.leaderboard import default_out
        from bench.leaderboard import write_leaderboard

        out = Path(args.out) if args.out else default_out(plan.store)
        written = write_leaderboard(plan.store, out)
        print(f"[sweep] leaderboard: {len(written)} file(s) in {out}", file=sys.stderr)
    return 1 if res.failed else 0

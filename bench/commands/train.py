"""``bench train``: one supervised run (task, encoder, featurizer, fraction, seed) -> one record.

Prints a one-line summary (val/test MAE with the unit, selected epoch, wall time), or the record as JSON with
``--json``. ``--store DIR`` keeps the record under ``DIR/records/<run_id>.json`` (and serves an identical re-run
from it); ``--out FILE`` also writes the record to FILE.
"""

from __future__ import annotations

import json
import sys

from bench.commands import key_values


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one encoder on one task (one run -> one record)",
                       description=__doc__.split("\n")[0])
    p.add_argument("--encoder", required=True, help="registered encoder, e.g. cgcnn (see `bench list encoders`)")
    p.add_argument("--task", required=True, help="registered task (see `bench list tasks`)")
    p.add_argument("--features", required=True,
                   help="atom featurizer spec: onehot, cgcnn, learned, random, crysatom-published, "
                        "published:<name> (e.g. published:mat2vec), embedding:<table.json>, "
                        "embedding-init:<table.json>; see `bench list featurizers`")
    p.add_argument("--features-label", default=None, help="display name of the featurizer in records/leaderboard")
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of the training split (0, 1]; default 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default: the encoder's reference (configs/encoders)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--data-dir", default=None, help="directory with the dataset files, or 'sample'")
    p.add_argument("--train-limit", type=int, default=None, help="use a fixed subset of N training entries")
    p.add_argument("--val-limit", type=int, default=None, help="use a fixed subset of N validation entries")
    p.add_argument("--test-limit", type=int, default=None, help="use a fixed subset of N test entries")
    p.add_argument("--encoder-option", action="append", default=[], metavar="KEY=VALUE",
                   help="override an encoder option, e.g. hidden=32; repeatable")
    p.add_argument("--train-option", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training setting, e.g. lr=0.003 or batch_size=32; repeatable")
    p.add_argument("--store", default=None, help="record store directory (records/<run_id>.json)")
    p.add_argument("--out", default=None, help="also write the record JSON to this file")
    p.add_argument("--json", action="store_true", help="print the record as JSON instead of a summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run, registry_names=(("encoder", "encoder"), ("task", "task"), ("features", "featurizer")))


def summary(rec: dict) -> str:
    unit = rec.get("unit", "")
    return (
        f"{rec['task']} | {rec['encoder']} + {rec['features_label']} | fraction {rec['fraction']:g} seed {rec['seed']}"
        f" | n_train {rec['n_train']} | val MAE {rec['val_mae']:.4g} {unit} | test MAE {rec['test_mae']:.4g} {unit}"
        f" | epoch {rec['selected_epoch']}/{rec['epochs_run']} | {rec['wall_time_s']:.1f} s on {rec['device']}"
        f" | run {rec['run_id']}" + _skipped(rec) + _symmetry(rec)
    )


def _skipped(rec: dict) -> str:
    n = rec.get("skipped_entries") or 0
    return f" | {n} bad entr{'y' if n == 1 else 'ies'} skipped" if n else ""


def _symmetry(rec: dict) -> str:
    red = rec.get("symmetry_reduction")
    if not red:
        return ""
    return " | symmetry-reduced graphs: " + ", ".join(f"{k} {v:.2f}x" for k, v in red.items())


def _named_errors() -> tuple[type[BaseException], ...]:
    """Errors printed as one line, without a traceback: input errors are UserErrors already (bench/cli.py);
    a diverged training run is not, but is the user's to act on (lower the learning rate)."""
    from bench.train import TrainingError

    return (TrainingError,)


def run(args) -> int:
    from bench.cli import UserError
    from bench.paths import atomic_write_text
    from bench.runner import run_one

    config = {
        "task": args.task,
        "encoder": args.encoder,
        "features": args.features,
        "features_label": args.features_label,
        "fraction": args.fraction,
        "seed": args.seed,
        "epochs": args.epochs,
        "device": args.device,
        "data_dir": args.data_dir,
        "plugins": list(getattr(args, "plugins", []) or []),
        "encoder_options": key_values(args.encoder_option, "--encoder-option"),
        "train_options": key_values(args.train_option, "--train-option"),
        "train_limit": args.train_limit,
        "val_limit": args.val_limit,
        "test_limit": args.test_limit,
        "store": args.store,
        "progress": (not args.no_progress) and sys.stderr.isatty(),
    }
    try:
        rec = run_one(config)
    except _named_errors() as e:
        raise UserError(str(e)) from None
    text = json.dumps(rec, indent=1, sort_keys=True)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text if args.json else summary(rec))
    return 0

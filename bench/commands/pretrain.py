"""``bench pretrain --objective O ...``: pretrain an encoder with a self-supervised objective and write the
per-element embedding table (see bench/pretrain.py)."""

from __future__ import annotations

import sys

from bench.commands import key_values
from bench.settings import MESSAGE_PASSING, PRECISIONS


def _csv(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain an objective and write a per-element embedding table",
                       description=__doc__)
    p.add_argument("--objective", required=True, help="a registered objective (bench list objectives)")
    p.add_argument("--encoder", help="backbone (default: the objective's default encoder)")
    p.add_argument("--featurizer", help="atom input during pretraining (default: the objective's)")
    p.add_argument("--dim", type=int, help="node-embedding width = table width (default: the objective's)")
    p.add_argument("--epochs", type=int, default=None,
                   help="pretraining epochs (default: the objective's reference budget: unate 120, crysatom 110)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.03, help="Adam learning rate (references: 0.03)")
    p.add_argument("--corpus", default="dft_3d_2021,megnet,perov5,carbon24",
                   help="comma-separated sources: dft_3d_2021, megnet, perov5, carbon24, or 'sample'")
    p.add_argument("--corpus-limit", type=int, help="a seeded subset of this many structures")
    p.add_argument("--exclude-tasks", nargs="+", metavar="TASK",
                   help="tasks whose val/test structures are left out (default: all nine built-in tasks; "
                        "'none' keeps everything)")
    p.add_argument("--match-structures", action="store_true",
                   help="also leave out structures matching an excluded val/test structure in another source "
                        "(same reduced composition and space group, volume per atom within 2%%); the default")
    p.add_argument("--ids-only", action="store_true",
                   help="leave out excluded val/test structures by id only (no structure matching)")
    p.add_argument("--selection", choices=("validation", "train-loss", "last"),
                   help="which epoch's model gives the table (default: the objective's: unate validation, "
                        "crysatom train-loss)")
    p.add_argument("--extraction", choices=("mean", "last-batch", "uniform"),
                   help="how the table is read off the model (default: the objective's: unate mean, crysatom "
                        "last-batch)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="held-out part of the corpus for --selection validation")
    p.add_argument("--data-dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--message-passing", choices=MESSAGE_PASSING, default="auto",
                   help="graph kernels: DGL's on CPU where it imports, plain torch elsewhere (auto); recorded in "
                        "the table, not part of its cache key")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: bfloat16 autocast of the training and validation passes (part of the cache key)")
    p.add_argument("--out", help="table path (default: the cache, cache_dir()/tables/<objective>-<hash>.json, "
                                 "reused when it exists)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an objective option")
    p.add_argument("--encoder-set", action="append", default=[], metavar="KEY=VALUE", help="an encoder option")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, registry_names=(("objective", "objective"), ("encoder", "encoder"),
                                             ("featurizer", "featurizer")))


def run(args) -> int:
    from bench.pretrain import ensure_table, pretrain

    exclude = None
    if args.exclude_tasks is not None:
        exclude = () if [t.lower() for t in args.exclude_tasks] == ["none"] else tuple(
            t for x in args.exclude_tasks for t in x.split(",") if t)
    cfg = {
        "objective": args.objective,
        "encoder": args.encoder,
        "featurizer": args.featurizer,
        "dim": args.dim,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "corpus": _csv(args.corpus),
        "corpus_limit": args.corpus_limit,
        "exclude_tasks": exclude,
        "match_structures": not args.ids_only,
        "selection": args.selection,
        "extraction": args.extraction,
        "val_fraction": args.val_fraction,
        "data_dir": args.data_dir,
        "seed": args.seed,
        "device": args.device,
        "message_passing": args.message_passing,
        "precision": args.precision,
        "objective_options": key_values(args.set, "--set"),
        "encoder_options": key_values(args.encoder_set, "--encoder-set"),
        "plugins": tuple(getattr(args, "plugins", []) or []),
    }
    from bench.config import from_dict
    from bench.pretrain import PretrainConfig

    config = from_dict(PretrainConfig, cfg, what="bench pretrain")
    path = pretrain(config, out=args.out, progress=not args.quiet) if args.out else ensure_table(
        config, progress=not args.quiet)
    print(path)
    sys.stdout.flush()
    return 0

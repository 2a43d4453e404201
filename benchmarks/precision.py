"""Accuracy and speed of bf16 autocast against fp32 (``TrainSettings.precision``), on CPU.

Mixed precision (Micikevicius et al., "Mixed Precision Training", ICLR 2018; bfloat16 as in Kalamkar et al.,
"A Study of BFLOAT16 for Deep Learning Training", arXiv 1905.12322, 2019) should leave accuracy where it was:
the check here is that the validation MAE of bf16 runs lies within the seed spread of the fp32 runs. For CGCNN
and a small ALIGNN (both at their reference training settings otherwise), each seed trains once in fp32 and once
in bf16 through ``bench.runner.run_one`` (the same path as ``bench train``), on the same labelled subset.

It reports per encoder: fp32 and bf16 validation (and test) MAE per seed, their means, the fp32 seed spread
(max - min over seeds), the mean |bf16 - fp32| difference and whether it lies within that spread, and the
median epoch time of each (the speed ratio; CPUs without native bf16 matrix units may be slower in bf16).

    python benchmarks/precision.py                                   # bundled sample, 3 seeds
    python benchmarks/precision.py --encoders cgcnn --seeds 0,1 --epochs 5 --train-limit 200 --json out.json

Not a timed test: training takes minutes. ``tests/test_train.py`` checks that bf16 training runs and is recorded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

SMALL_ALIGNN = {"hidden": 64, "embedding_features": 32, "alignn_layers": 2, "gcn_layers": 2}
ENCODER_OPTIONS: dict[str, dict[str, Any]] = {"cgcnn": {}, "alignn": SMALL_ALIGNN}


def run(encoder: str, seed: int, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    from bench.runner import run_one

    cfg = {
        "task": args.task, "encoder": encoder, "features": "cgcnn", "fraction": 1.0, "seed": seed,
        "epochs": args.epochs, "device": "cpu", "data_dir": args.data_dir,
        "encoder_options": ENCODER_OPTIONS[encoder],
        "train_options": {"precision": precision, "batch_size": args.batch_size},
        "train_limit": args.train_limit, "val_limit": args.val_limit, "test_limit": args.val_limit,
    }
    t = time.perf_counter()
    rec = run_one(cfg)
    return {"seed": seed, "precision": precision, "val_mae": rec["val_mae"], "test_mae": rec["test_mae"],
            "selected_epoch": rec["selected_epoch"], "epoch_time_s": statistics.median(rec["curve"]["epoch_time_s"]),
            "wall_s": time.perf_counter() - t, "run_id": rec["run_id"], "message_passing": rec.get("message_passing")}


def summarise(encoder: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {p: sorted((r for r in rows if r["precision"] == p), key=lambda r: r["seed"]) for p in ("fp32", "bf16")}
    fp, bf = by["fp32"], by["bf16"]
    spread = max(r["val_mae"] for r in fp) - min(r["val_mae"] for r in fp)
    diffs = [abs(a["val_mae"] - b["val_mae"]) for a, b in zip(fp, bf)]
    mean_fp = statistics.mean(r["val_mae"] for r in fp)
    mean_bf = statistics.mean(r["val_mae"] for r in bf)
    t_fp = statistics.median(r["epoch_time_s"] for r in fp)
    t_bf = statistics.median(r["epoch_time_s"] for r in bf)
    return {
        "encoder": encoder, "options": ENCODER_OPTIONS[encoder], "runs": rows,
        "val_mae_fp32_mean": mean_fp, "val_mae_bf16_mean": mean_bf,
        "fp32_seed_spread": spread, "mean_abs_diff": statistics.mean(diffs),
        "means_within_spread": abs(mean_bf - mean_fp) <= spread,
        "epoch_s_fp32": t_fp, "epoch_s_bf16": t_bf, "bf16_speedup": t_fp / t_bf,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoders", default="cgcnn,alignn")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--task", default="dft_3d_formation_energy_peratom")
    p.add_argument("--data-dir", default="sample", help="'sample' (bundled) or a JARVIS data directory")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-limit", type=int, default=1000)
    p.add_argument("--val-limit", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    out = []
    for enc in args.encoders.split(","):
        rows = [run(enc, int(s), prec, args) for s in args.seeds.split(",") for prec in ("fp32", "bf16")]
        out.append(summarise(enc, rows))
    print(f"{args.task} ({args.data_dir}), {args.train_limit} train / {args.val_limit} val, {args.epochs} epochs, "
          f"batch {args.batch_size}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'encoder':8} {'fp32 val MAE':>13} {'bf16 val MAE':>13} {'fp32 spread':>12} {'|diff|':>8} "
          f"{'within':>6} {'fp32 s/ep':>9} {'bf16 s/ep':>9} {'speed-up':>8}")
    for r in out:
        print(f"{r['encoder']:8} {r['val_mae_fp32_mean']:>13.4f} {r['val_mae_bf16_mean']:>13.4f} "
              f"{r['fp32_seed_spread']:>12.4f} {r['mean_abs_diff']:>8.4f} {str(r['means_within_spread']):>6} "
              f"{r['epoch_s_fp32']:>9.2f} {r['epoch_s_bf16']:>9.2f} {r['bf16_speedup']:>7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

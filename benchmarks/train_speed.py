"""Training throughput of the four encoders on real JARVIS dft_3d batches, on this machine's CPU (or a GPU with
--device cuda), and ALIGNN side by side with the reference DGL model of the ``alignn`` package.

For each encoder (reference widths from configs/encoders/<name>.yaml, reference featurizer, reference optimizer)
it reports: structures/s for a full training step (forward + backward + optimizer step), the median step time,
the data-pipeline time per batch (``bench.graphs.collate`` from cached GraphData, i.e. what a training loop pays
per step once graphs are cached) as a share of the step, and the peak memory (CPU: the worker's peak RSS
increase during training; CUDA: ``max_memory_allocated``). Each encoder runs in its own subprocess so that the
peak-memory numbers do not mix.

For ALIGNN it also times alignn 2026's DGL-free ``alignn.models.alignn_atomwise_pure.ALIGNNAtomWisePure`` at the
same width on the same graphs (what ALIGNN users pick today; other weights, so timing only). And it builds
``alignn.models.alignn.ALIGNN`` (alignn package, installed with ``make benchmark-env``)
at the same width, loads the same weights into both (``ALIGNN.convert_reference_state_dict``), checks that the
parameter counts match and that both give the same predictions on the same batch, then times forward + backward
of both on the same batches, interleaved, and prints the ratio of the medians. Ours runs as training runs it, on
the symmetry-reduced graphs (``bench.quotient``: the same function, one representative per class of atoms, bonds
and triplets); it is also timed on the full graphs, so both figures are printed. The reduction depends on how
symmetric the structures are, so it is printed for the sample used.

On CPU with DGL importable, every encoder is also timed with both message-passing implementations
(``bench.graphops``: DGL's kernels, the CPU default, and plain torch, the GPU and no-DGL path), interleaved on the
same batches: collate + forward + backward per step (the DGL graph is built from the batch's index tensors on
first use, as in training), and the ratio of the medians is printed.

    python benchmarks/train_speed.py                    # 256 dft_3d structures, batch 64, 1 thread
    python benchmarks/train_speed.py --encoders alignn --steps 10 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "jarvis" / "jdft_3d-8-18-2021.json.zip"
ENCODERS = ("cgcnn", "alignn", "megnet", "cartnet")


def load_structures(n: int, seed: int, source: Path):
    """n real dft_3d structures, a seeded random sample of rows (the fixture if the bundle is absent)."""
    import numpy as np

    from bench.structures import Structure

    if source.exists():
        with zipfile.ZipFile(source) as z:
            rows = json.loads(z.read(z.namelist()[0]))
        idx = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
        picked = [rows[i] for i in sorted(idx)]
        where = f"{source.name}: {len(picked)} of {len(rows)} rows (seed {seed})"
    else:
        entries = json.loads((REPO / "tests" / "fixtures" / "structures.json").read_text())["entries"]
        picked = (entries * (n // len(entries) + 1))[:n]
        where = f"tests/fixtures/structures.json (bundle not found at {source}), repeated to {n}"
    structs = [Structure.from_jarvis(r["atoms"], r["jid"]) for r in picked]
    ys = [float(r["formation_energy_peratom"]) for r in picked]
    return structs, ys, where


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_optimizer(model, ts):
    import torch

    if ts.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=ts.lr, momentum=ts.momentum, weight_decay=ts.weight_decay)
    cls = torch.optim.AdamW if ts.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=ts.lr, weight_decay=ts.weight_decay)


def sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(args) -> dict:
    import numpy as np
    import torch

    import bench.encoders  # noqa: F401
    from bench.encoders import build_encoder, count_parameters, load_encoder_config, reference_feature_dim
    from bench.featurizers import build_featurizer
    from bench.graphs import build_graph, collate
    from bench.quotient import quotient_of, reduction
    from bench.registry import ENCODERS as REG
    from bench.train import uses_quotient

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name, device = args.worker, args.device
    structs, ys, where = load_structures(args.structures, args.seed, Path(args.data))
    cls = REG.get(name)
    t0 = time.perf_counter()
    graphs = [build_graph(s, cls.graph_spec) for s in structs]
    graph_s = time.perf_counter() - t0
    y = np.asarray(ys)
    y = (y - y.mean()) / y.std()
    bs = args.batch_size
    items = [(g, float(v)) for g, v in zip(graphs, y)]
    chunks = [items[i : i + bs] for i in range(0, len(items) - bs + 1, bs)]

    opts, ts = load_encoder_config(name)
    spec = ts.featurizer
    dim = reference_feature_dim(name, opts) if spec == "learned" else None
    model = build_encoder(name, build_featurizer(spec, dim=dim), opts).to(device)
    # as training runs it: symmetry-reduced graphs where the encoder supports them; their classes are computed
    # once per structure per run (memoised, like the cached graphs), so that cost is reported, not per step
    quotient = uses_quotient(model, ts)
    symmetry = None
    symmetry_s = 0.0
    if quotient:
        t0 = time.perf_counter()
        symmetry = reduction(quotient_of(g) for g in graphs)
        symmetry_s = (time.perf_counter() - t0) / len(graphs)
    opt = make_optimizer(model, ts)
    loss_fn = torch.nn.functional.l1_loss if ts.loss == "l1" else torch.nn.functional.mse_loss

    collate_t, step_t = [], []
    rss0 = rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for k in range(args.steps + 1):  # step 0 is warm-up
        t = time.perf_counter()
        batch = collate(chunks[k % len(chunks)], quotient=quotient).to(device)
        sync(device)
        t1 = time.perf_counter()
        out = model(batch)
        loss = loss_fn(out.pred, batch.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        t2 = time.perf_counter()
        if k:
            collate_t.append(t1 - t)
            step_t.append(t2 - t1)
    step = statistics.median(step_t)
    res = {
        "encoder": name,
        "featurizer": spec,
        "params": count_parameters(model, include_featurizer=False),
        "params_with_table": count_parameters(model),
        "data": where,
        "batch_size": bs,
        "mean_atoms": float(np.mean([g.num_nodes for g in graphs])),
        "mean_edges": float(np.mean([g.num_edges for g in graphs])),
        "graph_build_s_per_structure": graph_s / len(graphs),
        "symmetry_reduced": quotient,
        "symmetry_reduction": symmetry,
        "symmetry_classes_s_per_structure": symmetry_s,
        "step_median_s": step,
        "structures_per_s": bs / step,
        "collate_median_s": statistics.median(collate_t),
        "pipeline_share": statistics.median(collate_t) / (statistics.median(collate_t) + step),
        "peak_mem_mb": (torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda")
        else peak_rss_mb() - rss0,
        "mem_kind": "cuda max_memory_allocated" if device.startswith("cuda") else "peak RSS increase",
    }
    if name == "alignn" and not args.no_reference:
        res["reference"] = compare_alignn(model, chunks, args, device)
    from bench import graphops

    if device == "cpu" and graphops.dgl_available():
        res["implementations"] = compare_implementations(model, chunks, quotient, loss_fn, args.steps)
    return res


def compare_implementations(model, chunks, quotient: bool, loss_fn, steps: int) -> dict:
    """Collate + forward + backward with DGL's kernels and with plain torch, interleaved on the same batches."""
    import torch

    from bench import graphops
    from bench.graphs import collate

    names = ("dgl", "torch")
    times: dict[str, list[float]] = {n: [] for n in names}
    model.train()
    for k in range(steps + 1):  # step 0 is warm-up
        for impl in (names if k % 2 else names[::-1]):  # alternate the order: no systematic cache advantage
            with graphops.use_implementation(impl):
                t = time.perf_counter()
                batch = collate(chunks[k % len(chunks)], quotient=quotient)
                model.zero_grad(set_to_none=True)
                loss_fn(model(batch).pred, batch.y).backward()
                if k:
                    times[impl].append(time.perf_counter() - t)
    d, t = (statistics.median(times[n]) for n in names)
    return {"step_median_s_dgl": d, "step_median_s_torch": t, "torch_over_dgl": t / d}


def compare_alignn(model, chunks, args, device) -> dict:
    """Same weights, same batches: parameter counts, agreement of predictions, forward+backward time ratio."""
    import torch

    from bench.encoders import count_parameters
    from bench.graphs import collate

    try:
        import alignn
        from alignn.models.alignn import ALIGNN as RefALIGNN
        from alignn.models.alignn import ALIGNNConfig
    except ImportError as e:
        return {"error": f"alignn package not importable ({e}); run `make benchmark-env`"}
    c = model.config
    ref = RefALIGNN(ALIGNNConfig(
        name="alignn", alignn_layers=c.alignn_layers, gcn_layers=c.gcn_layers, hidden_features=c.hidden,
        embedding_features=c.embedding_features, edge_input_features=c.edge_bins,
        triplet_input_features=c.angle_bins, atom_input_features=model.featurizer.dim,
    )).to(device)
    n_ref = sum(p.numel() for p in ref.parameters())
    n_ours = count_parameters(model, include_featurizer=False)
    model.load_state_dict(model.convert_reference_state_dict(ref.state_dict()), strict=False)
    feat = model.featurizer

    def ref_input(b):
        # the reference reads precomputed inputs: atom_features, r, and the line graph's angle cosines as "h"
        g, lg = b.g.local_var(), b.lg.local_var()
        with torch.no_grad():
            g.ndata["atom_features"] = feat(g.ndata["Z"])
        lg.edata["h"] = lg.edata["cos"]
        return g, lg, None

    # alignn 2026's DGL-free model at the same width, fed the same graphs (timed only: other weights)
    from gpu_check import as_torchgraphs, pure_alignn

    pure = pure_alignn(c, feat.dim)
    # ours as training runs it (symmetry-reduced graphs, bench.quotient) and on the full graphs
    batches = [collate(ch, quotient=True).to(device) for ch in chunks]
    full = [dataclasses.replace(b, q=None) for b in batches]
    model.eval(), ref.eval()
    with torch.no_grad():
        r0 = ref(ref_input(batches[0]))
        diff = (model(batches[0]).pred - r0).abs().max().item()
        diff_full = (model(full[0]).pred - r0).abs().max().item()
    model.train(), ref.train()
    runs = {
        "ours": lambda b, k: model(batches[k]).pred,
        "ours_full_graphs": lambda b, k: model(full[k]).pred,
        "reference": lambda b, k: ref(ref_input(full[k])),
    }
    if not isinstance(pure, str):
        pure = pure.to(device).train()
        tgs = [as_torchgraphs(b, feat) for b in full]
        runs["pure_torch"] = lambda b, k: pure((*tgs[k], None))["out"]
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for k in range(args.steps + 1):
        i = k % len(batches)
        for name in names[k % len(names):] + names[: k % len(names)]:  # rotate: no systematic cache advantage
            t = time.perf_counter()
            model.zero_grad(set_to_none=True), ref.zero_grad(set_to_none=True)
            if not isinstance(pure, str):
                pure.zero_grad(set_to_none=True)
            runs[name](None, i).square().mean().backward()
            sync(device)
            if k:
                times[name].append(time.perf_counter() - t)
    o, f, r = (statistics.median(times[n]) for n in names[:3])
    p = statistics.median(times["pure_torch"]) if "pure_torch" in times else None
    return {
        "pure_torch": pure if isinstance(pure, str) else "ok",
        "fwd_bwd_median_s_pure_torch": p,
        "speedup_vs_pure_torch": p / o if p else None,
        "speedup_vs_pure_torch_full_graphs": p / f if p else None,
        "alignn_version": getattr(alignn, "__version__", "?"),
        "params_ours": n_ours,
        "params_reference": n_ref,
        "params_match": n_ours == n_ref,
        "max_abs_pred_diff_eval": diff,
        "max_abs_pred_diff_eval_full_graphs": diff_full,
        "fwd_bwd_median_s_ours": o,
        "fwd_bwd_median_s_ours_full_graphs": f,
        "fwd_bwd_median_s_reference": r,
        "speedup": r / o,
        "speedup_full_graphs": r / f,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoders", default=",".join(ENCODERS))
    p.add_argument("--structures", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="timed steps (after one warm-up step)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--no-reference", action="store_true", help="skip the alignn package comparison")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0
    results = []
    for name in args.encoders.split(","):
        cmd = [sys.executable, __file__, "--worker", name, "--structures", str(args.structures), "--batch-size",
               str(args.batch_size), "--steps", str(args.steps), "--threads", str(args.threads), "--device",
               args.device, "--seed", str(args.seed), "--data", args.data] + (["--no-reference"] if args.no_reference else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode or not line:
            print(f"{name}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            return 1
        results.append(json.loads(line[0][7:]))
    import torch

    print(f"device {args.device}, torch threads {args.threads}, torch {torch.__version__}, batch {args.batch_size}, "
          f"{args.steps} timed steps; data: {results[0]['data']}")
    hdr = f"{'encoder':8} {'featurizer':9} {'params':>9} {'atoms':>6} {'edges':>7} {'step s':>8} {'struct/s':>9} " \
          f"{'collate s':>9} {'pipeline':>8} {'peak MB':>8}  symmetry-reduced graphs (members per class)"
    print(hdr)
    for r in results:
        red = r.get("symmetry_reduction")
        red = ", ".join(f"{k} {v:.2f}x" for k, v in red.items()) if red else "no (full graphs)"
        print(f"{r['encoder']:8} {r['featurizer']:9} {r['params']:>9,} {r['mean_atoms']:>6.1f} {r['mean_edges']:>7.1f} "
              f"{r['step_median_s']:>8.3f} {r['structures_per_s']:>9.1f} {r['collate_median_s']:>9.4f} "
              f"{100 * r['pipeline_share']:>7.1f}% {r['peak_mem_mb']:>8.0f}  {red}")
    for r in results:
        imp = r.get("implementations")
        if imp:
            print(f"{r['encoder']:8} message passing (collate + forward + backward medians): DGL kernels "
                  f"{imp['step_median_s_dgl']:.3f} s, plain torch {imp['step_median_s_torch']:.3f} s, "
                  f"torch / DGL {imp['torch_over_dgl']:.2f}x")
    for r in results:
        ref = r.get("reference")
        if ref is None:
            continue
        if "error" in ref:
            print(f"alignn reference: {ref['error']}")
            continue
        red = r.get("symmetry_reduction") or {}
        print(f"ALIGNN vs alignn {ref['alignn_version']} (same weights, same batches, forward+backward medians): "
              f"ours {ref['fwd_bwd_median_s_ours']:.3f} s, reference {ref['fwd_bwd_median_s_reference']:.3f} s, "
              f"speed-up {ref['speedup']:.2f}x (on the full graphs {ref['fwd_bwd_median_s_ours_full_graphs']:.3f} s, "
              f"{ref['speedup_full_graphs']:.2f}x); parameters {ref['params_ours']:,} vs {ref['params_reference']:,} "
              f"({'match' if ref['params_match'] else 'MISMATCH'}); max |pred diff| (eval) "
              f"{ref['max_abs_pred_diff_eval']:.2e} ({ref['max_abs_pred_diff_eval_full_graphs']:.2e} full graphs)")
        if ref.get("fwd_bwd_median_s_pure_torch"):
            print(f"ALIGNN vs alignn's pure-torch model (alignn_atomwise_pure, same width, same graphs): pure-torch "
                  f"{ref['fwd_bwd_median_s_pure_torch']:.3f} s, speed-up {ref['speedup_vs_pure_torch']:.2f}x "
                  f"({ref['speedup_vs_pure_torch_full_graphs']:.2f}x on the full graphs)")
        elif ref.get("pure_torch") not in (None, "ok"):
            print(f"alignn pure-torch model: {ref['pure_torch']}")
        if red:
            print("  symmetry reduction of this sample (members per class): "
                  + ", ".join(f"{k} {v:.2f}x" for k, v in red.items())
                  + f"; classes computed once per structure in {1e3 * r['symmetry_classes_s_per_structure']:.1f} ms")
    if args.json:
        from bench.paths import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

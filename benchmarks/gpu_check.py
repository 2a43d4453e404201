"""GPU check for a machine with one CUDA GPU, a few minutes end to end: does crysbench run there, compute the
same numbers as on CPU, and how fast is ALIGNN against the pure-torch ALIGNN that alignn users pick today?

1. environment: Python, torch, CUDA, the GPU, whether dgl imports, which message-passing implementation
   (bench.graphops) runs on the GPU (plain torch unless forced).
2. parity: every encoder's forward + backward on CUDA equals the CPU (CPU: DGL's kernels where dgl imports, else
   plain torch), on real structures (tests/fixtures), full and symmetry-reduced graphs, in float64 (max relative
   difference of predictions, node outputs, gradients, running statistics; must be < 1e-8) and in float32
   (reported).
3. throughput: ALIGNN at the reference width (4 + 4 layers, hidden 256) on dft_3d structures of the bundled
   sample, batch 64, forward + backward medians on the GPU, fp32 and bf16 autocast: crysbench on the
   symmetry-reduced graphs (as it trains) and on the full graphs, and alignn 2026.8.11's pure-torch model
   (``alignn.models.alignn_atomwise_pure.ALIGNNAtomWisePure``, Choudhary & DeCost, npj Comput. Mater. 7, 185,
   2021; same width, fed the same graphs) when the alignn package is importable.
4. sweep: a short ``bench run --gpus-per-trial 0.5`` (CGCNN, bundled sample, 2 epochs, 2 seeds: two trials share
   the GPU), then every record must say device cuda and message passing torch.

    python benchmarks/gpu_check.py --json gpu_check.json
    python benchmarks/gpu_check.py --skip-sweep --steps 5
    python benchmarks/gpu_check.py --device cpu --skip-sweep --structures 64 --batch-size 16 --steps 1   # dry run

On ``--device cpu`` (a dry run of the script where no GPU is at hand) the device side is forced onto the plain
torch implementation, so the parity rows compare DGL's kernels with plain torch.

Exit status 0 only when every check passes (throughput is reported, not checked). Prints one summary table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # fixture_data: the real structures the tests use

ALIGNN_REFERENCE = {"alignn_layers": 4, "gcn_layers": 4, "hidden": 256, "embedding_features": 64}
SMALL = {"cgcnn": {}, "alignn": {"hidden": 64, "embedding_features": 32, "alignn_layers": 2, "gcn_layers": 2},
         "megnet": {}, "cartnet": {"dim": 64, "layers": 2}}


def environment() -> dict[str, Any]:
    import numpy
    import torch

    from bench import graphops

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
            "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
            "dgl_importable": graphops.dgl_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        info["message_passing_on_cuda"] = graphops.resolve("cuda")
    info["message_passing_on_cpu"] = graphops.resolve("cpu")
    return info


def _cast_batch(batch, dtype):
    """The batch with its floating-point graph data in ``dtype`` (float64 for the exact comparison)."""
    from bench.graphs import Batch, QuotientBatch

    def cast(g):
        if g is None:
            return None
        out = g.local_var()
        out.ndata = {k: v.to(dtype) if v.is_floating_point() else v for k, v in g.ndata.items()}
        out.edata = {k: v.to(dtype) if v.is_floating_point() else v for k, v in g.edata.items()}
        return out

    q = batch.q if batch.q is None else QuotientBatch(cast(batch.q.g), cast(batch.q.lg), batch.q.atom_class)
    return Batch(cast(batch.graph), cast(batch.line), batch.y.to(dtype), batch.num_graphs, q)


def _fwd_bwd(model, batch) -> dict[str, Any]:
    import torch

    model.train()
    out = model(batch)
    w = torch.linspace(1.0, 2.0, batch.num_graphs, dtype=out.pred.dtype, device=out.pred.device)
    ((out.pred * w).sum() + out.node.square().mean()).backward()
    res = {"pred": out.pred.detach().cpu(), "node": out.node.detach().cpu()}
    res.update({f"grad:{n}": p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None})
    res.update({f"buffer:{n}": b.cpu() for n, b in model.named_buffers() if b.is_floating_point()})
    return res


def _max_rel(a: dict, b: dict) -> tuple[float, str]:
    worst, where = 0.0, ""
    for k in a:
        scale = float(a[k].abs().max()) + 1e-12
        d = float((a[k].double() - b[k].double()).abs().max()) / scale
        if d > worst:
            worst, where = d, k
    return worst, where


def parity(device: str) -> list[dict[str, Any]]:
    import torch

    from bench import graphops
    from bench.encoders import build_encoder
    from bench.featurizers import build_featurizer
    from bench.graphs import build_graph, collate
    from bench.registry import ENCODERS
    from fixture_data import load_fixture_structures

    structs = load_fixture_structures()
    picked = [structs[1][0]] + [s for s, _ in structs if 8 <= len(s.numbers) <= 24][:7]
    rows = []
    for name in ENCODERS.list():
        cls = ENCODERS.get(name)
        for reduced in ((False, True) if cls.supports_quotient else (False,)):
            base = collate([(build_graph(s, cls.graph_spec), float(k)) for k, s in enumerate(picked)],
                           quotient=reduced)
            torch.manual_seed(0)
            model = build_encoder(name, build_featurizer("cgcnn"), SMALL.get(name))
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_(0.0, 0.2)
            row = {"encoder": name, "graphs": "reduced" if reduced else "full"}
            for dtype, key in ((torch.float64, "float64"), (torch.float32, "float32")):
                batch = _cast_batch(base, dtype)
                m = copy.deepcopy(model).to(dtype)
                cpu = _fwd_bwd(copy.deepcopy(m), batch)
                with graphops.use_implementation("torch"):  # what auto picks on a GPU
                    gpu = _fwd_bwd(copy.deepcopy(m).to(device), batch.to(device))
                row[key], row[f"{key}_worst"] = _max_rel(cpu, gpu)
            row["ok"] = row["float64"] < 1e-8
            rows.append(row)
    return rows


def _median_time(fn: Callable[[], Any], steps: int, device: str) -> float:
    import torch

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for k in range(steps + 1):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        if k:  # the first is warm-up
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def pure_alignn(c, feat_dim: int):
    """alignn's pure-torch ALIGNN for property prediction at the width of our config ``c``, or an error string."""
    try:
        from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig
    except ImportError as e:
        return f"alignn not importable ({e}); pip install --no-deps 'alignn==2026.8.11' pydantic-settings"
    cfg = ALIGNNAtomWisePureConfig(
        name="alignn_atomwise_pure", alignn_layers=c.alignn_layers, gcn_layers=c.gcn_layers,
        hidden_features=c.hidden, embedding_features=c.embedding_features, edge_input_features=c.edge_bins,
        triplet_input_features=c.angle_bins, atom_input_features=feat_dim, calculate_gradient=False,
        gradwise_weight=0.0, use_penalty=False, energy_mult_natoms=False, use_zbl=False, lg_on_fly=False)
    return ALIGNNAtomWisePure(cfg)


def as_torchgraphs(batch, feat):
    """Our batch as alignn's TorchGraph pair (the same edges, triplets, vectors r and cosines)."""
    import torch
    from alignn.torch_graph_builder import TorchGraph

    g, lg = batch.graph, batch.line
    with torch.no_grad():
        x = feat(g.ndata["Z"])
    tg = TorchGraph(num_nodes=g.num_nodes(), src=g.src, dst=g.dst, ndata={"atom_features": x},
                    edata={"r": g.edata["r"]}, batch_num_nodes=g.node_counts, batch_num_edges=g.edge_counts)
    tlg = TorchGraph(num_nodes=lg.num_nodes(), src=lg.src, dst=lg.dst, edata={"h": lg.edata["cos"]},
                     batch_num_nodes=lg.node_counts, batch_num_edges=lg.edge_counts)
    return tg, tlg


def throughput(device: str, n_structures: int, batch_size: int, steps: int, hidden: int = 256) -> dict[str, Any]:
    import dataclasses

    import torch

    from bench.encoders import build_encoder
    from bench.featurizers import build_featurizer
    from bench.graphs import build_graph, collate
    from bench.tasks import load_task

    data = load_task("dft_3d_formation_energy_peratom", "sample")
    structs = data.structures[:n_structures]
    graphs = [build_graph(s, "alignn") for s in structs]
    chunks = [[(g, 0.0) for g in graphs[i : i + batch_size]] for i in range(0, len(graphs) - batch_size + 1, batch_size)]
    torch.manual_seed(0)
    feat = build_featurizer("cgcnn")
    ours = build_encoder("alignn", feat, {**ALIGNN_REFERENCE, "hidden": hidden}).to(device)
    reduced = [collate(ch, quotient=True).to(device) for ch in chunks]
    full = [dataclasses.replace(b, q=None) for b in reduced]
    pure = pure_alignn(ours.config, feat.dim)
    runs: dict[str, Callable[[int], Any]] = {
        "crysbench (symmetry-reduced)": lambda k: ours(reduced[k % len(reduced)]).pred,
        "crysbench (full graphs)": lambda k: ours(full[k % len(full)]).pred,
    }
    if not isinstance(pure, str):
        pure = pure.to(device)
        tgs = [as_torchgraphs(b, feat) for b in full]
        runs["alignn pure-torch"] = lambda k: pure((*tgs[k % len(tgs)], None))["out"]
    out: dict[str, Any] = {"structures": len(graphs), "batch_size": batch_size, "steps": steps, "hidden": hidden,
                           "pure_torch": pure if isinstance(pure, str) else "ok", "rows": []}
    for precision in ("fp32", "bf16"):
        for name, fn in runs.items():
            counter = iter(range(10**6))

            def step() -> None:
                ours.zero_grad(set_to_none=True)
                if not isinstance(pure, str):
                    pure.zero_grad(set_to_none=True)
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    pred = fn(next(counter))
                pred.float().square().mean().backward()

            cuda = torch.device(device).type == "cuda"
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            t = _median_time(step, steps, device)
            out["rows"].append({"model": name, "precision": precision, "fwd_bwd_median_s": t,
                                "structures_per_s": batch_size / t,
                                "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else 0.0})
    return out


def sweep(tmp: Path, timeout: int) -> dict[str, Any]:
    store = tmp / "store"
    cmd = [str(Path(sys.executable).with_name("bench")), "run", "--suite", "smoke", "--encoder", "cgcnn", "--features", "onehot",
           "--fractions", "1.0", "--seeds", "0,1", "--epochs", "2", "--gpus-per-trial", "0.5",
           "--cpus-per-trial", "1", "--store", str(store), "--no-leaderboard"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    recs = [json.loads(p.read_text()) for p in sorted(store.rglob("*.json")) if p.parent.name != "claims"]
    recs = [r for r in recs if "run_id" in r and "device" in r]
    ok = (proc.returncode == 0 and len(recs) == 2
          and all(r["device"].startswith("cuda") and r.get("message_passing") == "torch" for r in recs))
    return {"ok": ok, "returncode": proc.returncode, "wall_s": time.perf_counter() - t,
            "records": [{"device": r["device"], "gpu": (r.get("hardware") or {}).get("gpu"),
                         "message_passing": r.get("message_passing"), "val_mae": r.get("val_mae")} for r in recs],
            "stderr_tail": proc.stderr[-2000:] if not ok else ""}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--structures", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--hidden", type=int, default=256, help="ALIGNN width for the throughput rows (reference 256)")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--sweep-timeout", type=int, default=300)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    env = environment()
    print("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    if args.device.startswith("cuda") and not env["cuda_available"]:
        print("no CUDA GPU visible to torch: nothing to check (--device cpu for a dry run)", file=sys.stderr)
        return 2
    res: dict[str, Any] = {"environment": env}
    res["parity"] = parity(args.device)
    print(f"\n{'encoder':8} {'graphs':8} {'float64 max rel':>16} {'float32 max rel':>16}  ok")
    for r in res["parity"]:
        print(f"{r['encoder']:8} {r['graphs']:8} {r['float64']:>16.2e} {r['float32']:>16.2e}  {r['ok']}"
              + ("" if r["ok"] else f"  (worst: {r['float64_worst']})"))
    res["throughput"] = throughput(args.device, args.structures, args.batch_size, args.steps, args.hidden)
    th = res["throughput"]
    print(f"\nALIGNN 4+4 layers, hidden {th['hidden']}, {th['structures']} bundled-sample structures, batch {th['batch_size']}, "
          f"forward + backward medians of {th['steps']} steps on {env.get('gpu')}; alignn pure-torch: {th['pure_torch']}")
    print(f"{'model':30} {'precision':9} {'s/batch':>8} {'struct/s':>9} {'peak MB':>8}")
    for r in th["rows"]:
        print(f"{r['model']:30} {r['precision']:9} {r['fwd_bwd_median_s']:>8.4f} {r['structures_per_s']:>9.0f} "
              f"{r['peak_mem_mb']:>8.0f}")
    ok = all(r["ok"] for r in res["parity"])
    if not args.skip_sweep:
        with tempfile.TemporaryDirectory() as tmp:
            res["sweep"] = sweep(Path(tmp), args.sweep_timeout)
        s = res["sweep"]
        print(f"\nbench run --gpus-per-trial 0.5: {'ok' if s['ok'] else 'FAILED'} in {s['wall_s']:.0f} s; records: "
              + "; ".join(f"{r['device']} {r['gpu']} {r['message_passing']} val MAE {r['val_mae']}" for r in s["records"]))
        if not s["ok"]:
            print(s["stderr_tail"], file=sys.stderr)
        ok = ok and s["ok"]
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

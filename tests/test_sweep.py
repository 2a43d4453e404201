"""`bench run`: suites, option checks that fail before Ray starts, the trial grid, device choice, Ray's GPU
plumbing (logical GPUs), a real two-node loopback cluster, and kill -9 then resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import sweep
from bench.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
TASK = "dft_3d_formation_energy_peratom"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ suites


def test_suites_load_and_say_what_they_are():
    from bench.plugins import load_builtins
    from bench.registry import TASKS

    load_builtins()
    assert {"smoke", "quick", "paper"} <= set(sweep.available_suites())
    smoke = sweep.load_suite("smoke")
    assert smoke.name == "smoke" and smoke.data_dir == "sample" and 1 <= len(smoke.tasks) <= 2
    assert len(smoke.fractions) == 2 and 1 <= len(smoke.seeds) <= 2 and smoke.epochs <= 10
    quick = sweep.load_suite("quick")
    assert quick.tasks == ("dft_3d_formation_energy_peratom", "dft_3d_optb88vdw_bandgap")
    assert (quick.train_limit, quick.val_limit, quick.test_limit) == (2000, 500, 1000)
    assert quick.fractions == (0.1, 1.0) and quick.seeds == (0, 1, 2)
    paper = sweep.load_suite("paper")
    assert set(paper.tasks) == set(TASKS.list()) and len(paper.tasks) == 9
    assert paper.epochs is None and paper.train_limit is None and paper.gpus_per_trial == 1
    assert paper.fractions == (0.1, 0.25, 0.5, 1.0) and paper.seeds == (0, 1, 2, 3, 4)
    for s in (smoke, quick, paper):  # every suite names only registered tasks
        for t in s.tasks:
            TASKS.entry(t)


def test_suite_keys_are_strict(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("tasks: [a]\nfractions: [1.0]\nseeds: [0]\nfractoins: [0.5]\n")
    with pytest.raises(ConfigError, match="fractoins.*Did you mean 'fractions'"):
        sweep.load_suite(str(bad))
    with pytest.raises(sweep.SweepError, match="unknown suite 'smok'. Did you mean 'smoke'"):
        sweep.load_suite("smok")


@pytest.mark.parametrize("changes, message", [
    ({"fractions": (0.0, 1.0)}, "fraction 0.0 is outside"),
    ({"fractions": (1.5,)}, "fraction 1.5 is outside"),
    ({"seeds": ()}, "seeds is empty"),
    ({"epochs": 0}, "epochs must be positive"),
    ({"gpus_per_trial": 1.5}, "fraction of a GPU"),
])
def test_override_checks_values(changes, message):
    with pytest.raises(sweep.SweepError, match=message):
        sweep.override(sweep.load_suite("smoke"), **changes)


def test_parse_list():
    assert sweep.parse_list("0.1, 0.5", float, "--fractions") == (0.1, 0.5)
    assert sweep.parse_list(None, int, "--seeds") is None
    with pytest.raises(sweep.SweepError, match="--seeds is empty"):
        sweep.parse_list(" , ", int, "--seeds")
    with pytest.raises(sweep.SweepError, match="'x' is not a valid int"):
        sweep.parse_list("0,x", int, "--seeds")


# ------------------------------------------------------------------------------------------ the grid


def test_grid_covers_every_trial_once(tmp_path):
    plan = sweep.SweepPlan(suite=sweep.override(sweep.load_suite("smoke"), seeds=(0, 1, 2)),
                           encoders=("cgcnn", "megnet"), objectives=("crysatom",), controls=True,
                           store=tmp_path.resolve())
    tables = {"crysatom": tmp_path / "t.json"}
    cfgs = sweep.trial_configs(plan, tables, 200)
    labels = ["onehot", "crysatom", "random", "crysatom-published", "cgcnn"]
    assert len(cfgs) == len(plan.suite.tasks) * 2 * len(labels) * 2 * 3
    keys = {(c["task"], c["encoder"], c["features_label"], c["fraction"], c["seed"]) for c in cfgs}
    assert len(keys) == len(cfgs)
    emb = [c for c in cfgs if c["features_label"] == "crysatom"][0]
    assert emb["features"] == f"embedding:{(tmp_path / 't.json').resolve()}"
    assert all(c["store"] == str(tmp_path.resolve()) and c["data_dir"] == "sample" for c in cfgs)
    assert all("train_options" not in c for c in sweep.trial_configs(
        dataclasses.replace(plan, suite=dataclasses.replace(plan.suite, batch_size=None)), tables, 200))
    assert {c["train_options"]["batch_size"] for c in cfgs} == {plan.suite.batch_size}
    # the random control matches the tables' width
    assert {c["features"] for c in cfgs if c["features_label"] == "random"} == {"random:0:200"}
    assert {c["features"] for c in sweep.trial_configs(plan, tables, 64)
            if c["features_label"] == "random"} == {"random:0:64"}
    # the pretraining corpus excludes the evaluated tasks' val/test structures (leakage rule)
    pc = sweep.pretrain_config(plan, "crysatom")
    assert pc["exclude_tasks"] == list(plan.suite.tasks) and pc["dim"] == 200 and pc["corpus"] == "sample"
    assert pc["match_structures"] is True  # structure matching by default
    # match_structures: false (bench run --ids-only) reaches pretraining and gives a differently keyed table
    from bench.pretrain import as_config, canonical_identity

    ids_only = dataclasses.replace(plan, suite=sweep.override(plan.suite, match_structures=False))
    pm = sweep.pretrain_config(ids_only, "crysatom")
    assert as_config(pm).match_structures is False
    assert canonical_identity(pm) != canonical_identity(pc)


def test_each_objective_keeps_its_width_with_one_random_control_per_width(tmp_path):
    """UNATE pretrains at 128 and CrysAtom at 200 in the paper suite (no pretrain_dim): no width is forced on
    both, and the random control comes at each table's width."""
    plan = sweep.SweepPlan(suite=sweep.load_suite("paper"), encoders=("cgcnn",), objectives=("unate", "crysatom"),
                           controls=True, store=tmp_path.resolve())
    assert plan.suite.pretrain_dim is None and plan.suite.pretrain_epochs is None
    for obj in ("unate", "crysatom"):
        assert "dim" not in sweep.pretrain_config(plan, obj) and "epochs" not in sweep.pretrain_config(plan, obj)
    tables = {"unate": tmp_path / "u.json", "crysatom": tmp_path / "c.json"}
    cols = sweep.featurizer_columns(tables, True, {128, 200})
    random_cols = [c for c in cols if c["features"].startswith("random")]
    assert [(c["features"], c["features_label"]) for c in random_cols] == [("random:0:128", "random-128"),
                                                                           ("random:0:200", "random-200")]
    assert [c["features_label"] for c in sweep.featurizer_columns(tables, True, 64) if "random" in c["features"]] == [
        "random"]


def test_a_suite_compares_injection_modes_for_cartnet_only(tmp_path):
    """Suite key injections: CartNet runs each objective table in every listed way (UNATE's three and
    crysbench's frozen form); CGCNN, which has no injection option, keeps exactly its trial configs (and so its
    run ids)."""
    from bench.embeddings import save_table
    from bench.featurizers import random_vectors

    table = tmp_path / "u.json"
    save_table(table, random_vectors(16, seed=0), {"source": "test"})
    base = sweep.override(sweep.load_suite("smoke"), seeds=(0,), fractions=(1.0,))
    plain = sweep.SweepPlan(suite=base, encoders=("cgcnn", "cartnet"), objectives=("unate",), controls=True,
                            store=tmp_path.resolve())
    modes = sweep.SweepPlan(suite=sweep.override(base, injections=("encoder", "init", "linear", "direct")),
                            encoders=("cgcnn", "cartnet"), objectives=("unate",), controls=True,
                            store=tmp_path.resolve())
    before, after = (sweep.trial_configs(p, {"unate": table}, {16}) for p in (plain, modes))
    cg = [c for c in after if c["encoder"] == "cgcnn"]
    assert cg == [c for c in before if c["encoder"] == "cgcnn"] and all("encoder_options" not in c for c in cg)
    cn = {(c["features_label"], c["features"].partition(":")[0], str(c.get("encoder_options"))) for c in after
          if c["encoder"] == "cartnet"}
    assert ("unate", "embedding", "None") in cn  # crysbench's frozen form, as before
    assert ("unate-init", "embedding-init", "None") in cn  # way 1
    assert ("unate", "embedding", str({"injection": "linear"})) in cn  # way 2
    assert ("onehot", "onehot", str({"injection": "linear"})) in cn  # its table has the baseline
    assert ("unate", "embedding", str({"injection": "direct", "dim": 16})) in cn  # way 3 at the table's width
    assert ("random", "random", str({"injection": "direct", "dim": 16})) in cn
    assert not any(lab == "onehot" and "direct" in opts for lab, _, opts in cn)
    assert len({sweep.planned_run_id(c) for c in after}) == len(after)
    with pytest.raises(sweep.SweepError, match="Did you mean 'linear'"):
        sweep.override(base, injections=("lineer",))


def test_pretrained_tables_are_kept_in_the_store(tmp_path, monkeypatch):
    import bench.pretrain

    cached = tmp_path / "cache" / "crysatom-abc.json"
    cached.parent.mkdir()
    cached.write_text('{"table": {"H": [1.0, 0.0]}}')
    monkeypatch.setattr(bench.pretrain, "ensure_table", lambda cfg, progress=True: cached)
    monkeypatch.setattr(bench.pretrain, "table_path", lambda cfg: cached)
    plan = sweep.SweepPlan(suite=sweep.load_suite("smoke"), encoders=("cgcnn",), objectives=("crysatom",),
                           controls=False, store=(tmp_path / "store").resolve())
    tables = sweep.pretrain_tables(plan, progress=False)
    kept = tmp_path / "store" / "tables" / "crysatom-abc.json"
    assert tables == {"crysatom": kept.resolve()} and kept.read_bytes() == cached.read_bytes()
    assert sweep.pretrain_tables(plan, progress=False) == tables  # idempotent


def test_a_table_kept_in_the_store_is_used_on_a_machine_with_an_empty_cache(tmp_path, monkeypatch):
    # the committed store travels between machines, the cache does not: no second pretraining
    import bench.pretrain

    store = (tmp_path / "store").resolve()
    kept = store / "tables" / "crysatom-abc.json"
    kept.parent.mkdir(parents=True)
    kept.write_text('{"table": {"H": [1.0, 0.0]}}')
    monkeypatch.setattr(bench.pretrain, "table_path", lambda cfg: tmp_path / "empty-cache" / "crysatom-abc.json")

    def never(cfg, progress=True):
        raise AssertionError("pretrained again although the store holds the table")

    monkeypatch.setattr(bench.pretrain, "ensure_table", never)
    plan = sweep.SweepPlan(suite=sweep.load_suite("smoke"), encoders=("cgcnn",), objectives=("crysatom",),
                           controls=False, store=store)
    assert sweep.pretrain_tables(plan, progress=False) == {"crysatom": kept}
    kept.write_text("not json")  # a damaged copy is not trusted
    monkeypatch.setattr(bench.pretrain, "ensure_table", lambda cfg, progress=True: tmp_path / "fresh.json")
    (tmp_path / "fresh.json").write_text('{"table": {"H": [0.0, 1.0]}}')
    assert sweep.pretrain_tables(plan, progress=False) == {"crysatom": kept}
    assert kept.read_text() == (tmp_path / "fresh.json").read_text()



def test_resume_check_does_not_need_the_trial_device_on_the_driver(tmp_path):
    """The driver decides which trials are already recorded; the device is not part of the run id, and a
    driver without a GPU joining a GPU cluster with --device cuda must not fail resolving 'cuda' itself."""
    plan = dataclasses.replace(_small_plan(tmp_path.resolve(), seeds=(0,)), device="cuda")
    cfg = sweep.trial_configs(plan, {})[0]
    assert cfg["device"] == "cuda"
    assert sweep.planned_run_id(cfg) == sweep.planned_run_id(dict(cfg, device="cpu"))
    assert sweep.record_exists(cfg) is False

def test_choose_device():
    assert sweep.choose_device("auto", ["3"], cuda_available=True) == "cuda"
    assert sweep.choose_device("auto", [], cuda_available=True) == "cpu"
    assert sweep.choose_device("auto", ["0"], cuda_available=False) == "cpu"  # logical GPUs, no CUDA
    assert sweep.choose_device("cpu", ["0"], cuda_available=True) == "cpu"


def test_run_trial_hands_the_chosen_device_to_run_one(monkeypatch):
    """The product trainable: device from Ray's assignment (via choose_device) into run_one's config, and the
    assigned GPU ids and node into the reported result."""
    import ray
    import torch
    from ray import tune

    from bench import runner

    class Ctx:
        def get_node_id(self):
            return "node-x"

    seen, reported = {}, {}
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [2])
    monkeypatch.setattr(ray, "get_runtime_context", lambda: Ctx())
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    monkeypatch.setattr(runner, "run_one", lambda cfg: seen.update(cfg) or
                        {"status": "ok", "test_mae": 0.5, "val_mae": 0.6, "run_id": "r1"})
    monkeypatch.setattr(tune, "report", lambda metrics: reported.update(metrics))
    sweep.run_trial({"trial": {"task": TASK, "device": "auto"}})
    assert seen["device"] == "cuda"
    assert reported["gpu_ids"] == "2" and reported["cuda_visible_devices"] == "2"
    assert reported["device"] == "cuda" and reported["node_id"] == "node-x" and reported["test_mae"] == 0.5
    # a failed run is raised (Tune retries it), never reported as a result
    monkeypatch.setattr(runner, "run_one", lambda cfg: {"status": "failed", "run_id": "r2", "error": "boom"})
    with pytest.raises(RuntimeError, match="boom"):
        sweep.run_trial({"trial": {"task": TASK, "device": "auto"}})


# ------------------------------------------------------------------------------------------ bad options


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if anything would start Ray or pretrain."""
    def boom(*a, **k):
        raise AssertionError("Ray or pretraining started for options that should have been refused")

    monkeypatch.setattr(sweep, "init_ray", boom)
    monkeypatch.setattr(sweep, "pretrain_tables", boom)
    monkeypatch.setattr(sweep, "run_trials", boom)


@pytest.mark.parametrize("argv, message", [
    (["--encoder", "cgnn"], "unknown encoder 'cgnn'. Did you mean 'cgcnn'"),
    (["--encoder", "cgcnn", "--objective", "unat"], "unknown objective 'unat'. Did you mean 'unate'"),
    (["--encoder", "cgcnn", "--tasks", "dft_3d_formation_energy"], "unknown task"),
    (["--encoder", "cgcnn", "--fractions", "0,1"], "fraction 0.0 is outside (0, 1]"),
    (["--encoder", "cgcnn", "--seeds", ""], "--seeds is empty"),
    (["--encoder", "cgcnn", "--suite", "nope"], "unknown suite 'nope'"),
    (["--encoder", "cgcnn", "--max-retries", "-1"], "--max-retries must be >= 0"),
    (["--encoder", "cgcnn", "--gpus-per-trial", "64"], "gpus_per_trial 64: this machine has"),
])
def test_bad_options_fail_before_ray(no_ray, capsys, tmp_path, argv, message):
    from bench.cli import main

    assert main(["run", "--store", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_unreachable_address_fails_fast(no_ray, capsys, tmp_path, monkeypatch):
    from bench.cli import main

    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    assert main(["run", "--store", str(tmp_path), "--encoder", "cgcnn", "--address", f"127.0.0.1:{port}"]) == 2
    assert time.monotonic() - t0 < 10
    assert f"cannot connect to 127.0.0.1:{port}" in capsys.readouterr().err
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")  # the environment variable is checked the same way
    assert main(["run", "--store", str(tmp_path), "--encoder", "cgcnn"]) == 2
    with pytest.raises(sweep.SweepError, match="expected host:port"):
        sweep.check_address("somehost")


class _FakeServer:
    """A loopback TCP listener that is not a Ray head: it accepts, then stays silent, answers HTTP/1, or plays
    a minimal gRPC server (HTTP/2 SETTINGS, then response headers with :status 200 = HPACK 0x88)."""

    def __init__(self, mode: str) -> None:
        import threading

        self.mode, self.sock = mode, socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            if self.mode == "http1":
                c.recv(4096)
                c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                c.close()
            elif self.mode == "grpc":
                c.recv(4096)
                settings = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
                headers = bytes([0, 0, 1, 1, 4, 0, 0, 0, 1, 0x88])
                c.sendall(settings + headers)

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("mode, problem", [("silent", "no answer in 1.5 s"),
                                           ("http1", "it does not speak HTTP/2, as gRPC does")])
def test_an_address_that_accepts_tcp_but_is_not_ray_fails_in_bounded_time(mode, problem):
    srv = _FakeServer(mode)
    try:
        t0 = time.monotonic()
        with pytest.raises(sweep.SweepError) as e:
            sweep.check_address(f"127.0.0.1:{srv.port}", timeout=0.5, handshake_timeout=1.0)
        assert time.monotonic() - t0 < 5
        msg = str(e.value)
        assert msg.startswith(f"--address 127.0.0.1:{srv.port}: ") and "\n" not in msg
        assert f"accepts connections but is not a Ray head ({problem})" in msg
    finally:
        srv.close()
    grpc = _FakeServer("grpc")  # what a Ray head (its GCS, or the Ray Client server) looks like: it passes
    try:
        sweep.check_address(f"127.0.0.1:{grpc.port}", timeout=0.5, handshake_timeout=1.0)
        sweep.check_address(f"ray://127.0.0.1:{grpc.port}", timeout=0.5, handshake_timeout=1.0)
    finally:
        grpc.close()


def test_a_non_routable_address_fails_in_bounded_time():
    """Refused, timing out, or (behind a proxy that accepts every connection) answered by something that is not a
    Ray head: whichever the network does, one SweepError within the connect + handshake bounds."""
    t0 = time.monotonic()
    with pytest.raises(sweep.SweepError, match=r"^--address 10\.255\.255\.1:6379: [^\n]*$"):
        sweep.check_address("10.255.255.1:6379", timeout=2.0, handshake_timeout=3.0)
    assert time.monotonic() - t0 < 8


def test_bench_run_to_a_port_that_is_not_ray_exits_2_with_one_line(no_ray, capsys, tmp_path):
    from bench.cli import main

    srv = _FakeServer("http1")
    try:
        t0 = time.monotonic()
        assert main(["run", "--store", str(tmp_path), "--encoder", "cgcnn", "--address",
                     f"127.0.0.1:{srv.port}"]) == 2
        assert time.monotonic() - t0 < 15
    finally:
        srv.close()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "is not a Ray head" in err[0] and "Traceback" not in err[0], err


def test_split_address():
    assert sweep.split_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert sweep.split_address("ray://head:10001") == ("head", 10001)
    assert sweep.split_address("[::1]:6379") == ("::1", 6379)
    for bad in ("somehost", ":6379", "h:0", "h:x"):
        with pytest.raises(sweep.SweepError, match="--address"):
            sweep.split_address(bad)


# ------------------------------------------------------------------------------------------ Ray


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    import psutil

    return [(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def _gpu_probe(params):
    """Test trainable (Ray plumbing only): where it runs, on which GPU, and the device the product picks."""
    from ray import tune

    t0 = time.time()
    if params["trial"].get("fail"):  # counts its attempts, then fails every time
        with open(params["trial"]["fail"], "a") as f:
            f.write("attempt\n")
        raise RuntimeError("this trial always fails")
    env = sweep.trial_environment("auto")
    time.sleep(2.0)
    tune.report({"test_mae": 1.0, **env, "start": t0, "end": time.time(),
                 "device_if_cuda": sweep.choose_device("auto", env["gpu_ids"].split(","), True)})


@pytest.mark.ray
def test_logical_gpus_give_concurrent_trials_distinct_devices_and_ray_stays_on_loopback(tmp_path):
    import psutil
    import ray

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    sweep.init_ray(None, 0.5, 1, num_cpus=2, num_gpus=4)
    try:
        me = psutil.Process()
        pids = {me.pid} | {c.pid for c in me.children(recursive=True)}
        listening = _listening(pids)
        assert listening, "expected Ray's servers among this process's children"
        assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip, _ in listening), listening
        attempts = tmp_path / "attempts.txt"
        res = sweep.run_trials([{"i": i} for i in range(4)] + [{"fail": str(attempts)}], cpus_per_trial=0.5,
                               gpus_per_trial=1, storage_path=tmp_path / "ray", max_retries=1,
                               trainable=_gpu_probe)
    finally:
        ray.shutdown()
    # the failing trial was retried exactly max_retries times, then reported (not dropped)
    assert len(res.failed) == 1 and res.failed[0]["config"] == {"fail": str(attempts)}
    assert attempts.read_text().count("attempt") == 2
    assert len(res.results) == 4
    ids = [r["gpu_ids"] for r in res.results]
    assert sorted(ids) == ["0", "1", "2", "3"]  # one distinct logical GPU each
    assert all(r["cuda_visible_devices"] == r["gpu_ids"] for r in res.results)
    assert all(r["device"] == "cpu" and r["device_if_cuda"] == "cuda" for r in res.results)  # no real CUDA here
    assert max(r["start"] for r in res.results) < min(r["end"] for r in res.results)  # all four ran at once



@pytest.mark.ray
@pytest.mark.parametrize("how", ["argument", "RAY_ADDRESS"])
def test_address_local_starts_the_same_loopback_only_instance(how, monkeypatch, capfd):
    """'local' (which check_address accepts) means a new local instance: it must be the loopback-only one,
    not a default ray.init that binds the machine's routable address; and it starts without Ray's notices."""
    import psutil
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # restored afterwards, whatever init_ray sets
    if how == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "local")
    sweep.init_ray("local" if how == "argument" else None, 0.5, 0, num_cpus=1, num_gpus=0)
    err = capfd.readouterr().err
    assert "Token authentication" not in err and "WARNING" not in err, err  # printed by Ray in every run
    try:
        me = psutil.Process()
        listening = _listening({me.pid} | {c.pid for c in me.children(recursive=True)})
        assert listening, "expected Ray's servers among this process's children"
        assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip, _ in listening), listening
        assert ray.cluster_resources().get("CPU") == 1  # the resources asked for, as for address=None
        # a real Ray head passes the address probe (token authentication on or off)
        sweep.check_address(ray._private.worker.global_worker.node.gcs_address, timeout=2, handshake_timeout=5)
    finally:
        ray.shutdown()

def _ray_processes(marker: str) -> set[int]:
    import psutil

    pids = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in c for c in (p.info["cmdline"] or [])):
                pids.add(p.pid)
                pids.update(c.pid for c in p.children(recursive=True))
        except psutil.Error:
            pass
    return pids


def _kill(pids: set[int]) -> None:
    import psutil

    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


# `ray start` that keeps 127.0.0.1 as the node address (Ray otherwise advertises the machine's routable
# address and binds every interface), so the test cluster lives on loopback only.
_RAY_NODE = (
    "import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda h: h; "
    "from ray.scripts.scripts import main; sys.argv = ['ray'] + sys.argv[1:]; main()"
)


def _small_plan(store: Path, seeds=(0, 1), **kw) -> sweep.SweepPlan:
    suite = sweep.override(sweep.load_suite("smoke"), tasks=(TASK,), fractions=(0.5, 1.0), seeds=tuple(seeds),
                           epochs=1, train_limit=64, val_limit=32, test_limit=32, cpus_per_trial=1)
    return sweep.SweepPlan(suite=suite, encoders=("cgcnn",), objectives=(), controls=False, store=store, **kw)


@pytest.mark.slow
@pytest.mark.ray
def test_two_node_loopback_cluster_runs_trials_on_both_nodes(tmp_path, monkeypatch):
    from bench.records import read_records

    temp = Path(f"/tmp/cb{os.getpid()}")  # Ray's socket paths must stay short
    port = free_port()
    # Token auth on every node and the driver (Ray's default; a local ray.init earlier in this process has
    # already switched the driver to it, and a driver and workers that disagree kill every actor).
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    py = sys.executable
    try:
        subprocess.run([py, "-c", _RAY_NODE, "start", "--head", "--node-ip-address", "127.0.0.1", "--port",
                        str(port), "--num-cpus", "1", "--num-gpus", "0", "--include-dashboard=False",
                        "--disable-usage-stats", "--temp-dir", str(temp)], env=env, check=True,
                       capture_output=True, timeout=120)
        subprocess.run([py, "-c", _RAY_NODE, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address",
                        "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0", "--resources", '{"node2": 1}',
                        "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
        listening = _listening(_ray_processes(str(temp)))
        assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip, _ in listening), listening
        store = (tmp_path / "store").resolve()
        res = sweep.run_sweep(_small_plan(store, address=f"127.0.0.1:{port}"), progress=False)
    finally:
        _kill(_ray_processes(str(temp)))
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start` remembers its address here
        if current.is_file() and current.read_text().strip() == f"127.0.0.1:{port}":
            current.unlink()
    assert not res.failed and len(res.results) == 4
    assert len({r["node_id"] for r in res.results}) == 2, "trials should land on both nodes"
    assert all(r["node_ip"] == "127.0.0.1" for r in res.results)
    recs = read_records(store)
    assert sorted(r["run_id"] for r in recs) == sorted(r["run_id"] for r in res.results)


@pytest.mark.slow
@pytest.mark.ray
def test_kill_9_mid_sweep_then_resume_loses_and_duplicates_nothing(tmp_path):
    """A real `bench run` driver killed with SIGKILL (its whole process group, Ray included) after the first
    records land; the re-run launches only what is missing and every record is present exactly once."""
    store = (tmp_path / "store").resolve()
    temp = f"/tmp/ck{os.getpid()}"
    argv = [sys.executable, "-m", "bench.cli", "run", "--suite", "smoke", "--encoder", "cgcnn", "--tasks", TASK,
            "--fractions", "0.5,1.0", "--seeds", "0,1,2", "--epochs", "1", "--store", str(store),
            "--no-leaderboard", "--cpus-per-trial", "1"]
    env = {**os.environ, "RAY_TMPDIR": temp, "RAY_AUTH_MODE": "disabled"}
    suite = sweep.override(sweep.load_suite("smoke"), tasks=(TASK,), fractions=(0.5, 1.0), seeds=(0, 1, 2),
                           epochs=1, cpus_per_trial=1)
    plan = sweep.SweepPlan(suite=suite, encoders=("cgcnn",), objectives=(), controls=False, store=store)
    expected = {sweep.planned_run_id(c) for c in sweep.trial_configs(plan, {}, None)}
    assert len(expected) == 6
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = list((store / "records").glob("*.json")) if (store / "records").is_dir() else []
            if len(done) >= 1 or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep finished before it could be killed: " + proc.stderr.read()[-2000:]
        import psutil

        tree = {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}  # Ray's processes too
        os.killpg(proc.pid, signal.SIGKILL)
        _kill(tree)
        proc.wait(30)
    finally:
        _kill(_ray_processes(temp))
    time.sleep(1.0)
    before = {p.stem for p in (store / "records").glob("*.json")}
    assert 1 <= len(before) < 6
    out = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    _kill(_ray_processes(temp))
    assert out.returncode == 0, out.stderr[-3000:]
    import re

    m = re.search(r"(\d+) already in .*; launching (\d+)", out.stderr)
    assert m and int(m.group(1)) == len(before) and int(m.group(2)) == 6 - len(before), out.stderr[-2000:]
    files = sorted(p.name for p in (store / "records").glob("*.json"))
    assert {f[:-5] for f in files} == expected and len(files) == 6  # each run once, none lost
    for f in files:
        rec = json.loads((store / "records" / f).read_text())
        assert rec["status"] == "ok" and rec["run_id"] == f[:-5]


@pytest.mark.slow
@pytest.mark.ray
def test_ctrl_c_mid_sweep_stops_cleanly_then_the_same_command_resumes(tmp_path):
    """A real `bench run` driver and its Ray processes get SIGINT (as from a terminal's Ctrl-C, to the whole
    process group) after the first record: it exits 130 with one line saying how to resume, none of Tune's
    restore advice, tracebacks or FAILED lines; the re-run launches only what is missing."""
    store = (tmp_path / "store").resolve()
    temp = f"/tmp/cc{os.getpid()}"
    argv = [sys.executable, "-m", "bench.cli", *SMALL_RUN, "--store", str(store), "--cpus-per-trial", "1"]
    env = {**os.environ, "RAY_TMPDIR": temp}
    env.pop("RAY_AUTH_MODE", None)  # Ray's default (token), whose notice must not be printed either
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (store / "records").is_dir() and list((store / "records").glob("*.json")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep finished before it could be interrupted: " + proc.stderr.read()[-2000:]
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _kill(_ray_processes(temp))
    assert proc.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert "interrupted (SIGINT);" in lines[-1] and "run the same command again to resume" in lines[-1], err
    for noise in ("Tuner.restore", "FileNotFoundError", "FAILED", "Traceback", "WARNING", "Token authentication"):
        assert noise not in err, err[-3000:]
    assert not list((store / "claims").glob("*.json"))
    before = {p.stem for p in (store / "records").glob("*.json")}
    assert 1 <= len(before) < 4
    out = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    _kill(_ray_processes(temp))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{len(before)} already in {store}; launching {4 - len(before)}" in out.stderr
    assert len(list((store / "records").glob("*.json"))) == 4


def test_failed_trials_are_reported_and_set_the_exit_code(monkeypatch, capsys, tmp_path):
    from bench.cli import main

    failed = [{"config": {"task": TASK, "encoder": "cgcnn", "features_label": "onehot", "fraction": 0.5,
                          "seed": 1}, "error": "RuntimeError: diverged"}]
    monkeypatch.setattr(sweep, "run_sweep", lambda plan: sweep.SweepResult(3, 2, [{}, {}], failed))
    rc = main(["run", "--encoder", "cgcnn", "--store", str(tmp_path), "--no-leaderboard"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "2 trial(s) ran, 2 skipped (already recorded), 1 failed" in err
    assert f"FAILED {TASK} cgcnn onehot fraction=0.5 seed=1: RuntimeError: diverged" in err


def test_match_structures_flag_reaches_the_suite(tmp_path):
    from bench.cli import build_parser
    from bench.commands.run import build_plan
    from bench.plugins import load_builtins

    load_builtins()  # as bench.cli.main does (run alone, this test would see empty registries)
    base = ["run", "--encoder", "cgcnn", "--objective", "crysatom", "--store", str(tmp_path)]
    plain = build_plan(build_parser().parse_args(base))
    matched = build_plan(build_parser().parse_args(base + ["--match-structures"]))
    ids_only = build_plan(build_parser().parse_args(base + ["--ids-only"]))
    assert plain.suite.match_structures is True and matched.suite.match_structures is True
    assert ids_only.suite.match_structures is False
    assert sweep.pretrain_config(ids_only, "crysatom")["match_structures"] is False


def test_a_task_subset_pretrains_on_the_suites_corpus(tmp_path):
    """`bench run --suite quick --tasks <one of its tasks>` must find the suite's table: the corpus leaves out the
    val/test structures of every suite task, not only the ones this run evaluates (else a subset run silently
    pretrains a new table for hours, and its records do not pool with the suite's). A task from outside the
    suite is left out as well."""
    from bench.cli import build_parser
    from bench.commands.run import build_plan
    from bench.plugins import load_builtins
    from bench.pretrain import canonical_identity

    load_builtins()
    base = ["run", "--suite", "quick", "--encoder", "cgcnn", "--objective", "crysatom", "--store", str(tmp_path)]
    full = build_plan(build_parser().parse_args(base))
    subset = build_plan(build_parser().parse_args(base + ["--tasks", "dft_3d_optb88vdw_bandgap"]))
    assert subset.suite.tasks == ("dft_3d_optb88vdw_bandgap",)
    pf, ps = sweep.pretrain_config(full, "crysatom"), sweep.pretrain_config(subset, "crysatom")
    assert sorted(ps["exclude_tasks"]) == sorted(full.suite.tasks)
    assert canonical_identity(ps) == canonical_identity(pf)
    other = build_plan(build_parser().parse_args(base + ["--tasks", "dft_3d_mbj_bandgap"]))
    po = sweep.pretrain_config(other, "crysatom")
    assert sorted(po["exclude_tasks"]) == sorted(full.suite.tasks + ("dft_3d_mbj_bandgap",))
    assert canonical_identity(po) != canonical_identity(pf)


def test_progress_line_shows_the_best_validation_mae_never_the_test_mae(capsys):
    """A running best on the test set invites selecting on it: the sweep's line reports validation MAE."""
    p = sweep._ProgressCallback(total=2)
    cfg = {"task": TASK, "encoder": "cgcnn", "features_label": "onehot"}
    p.start("a")
    p.result("a", {"test_mae": 0.1, "val_mae": 0.9}, cfg)
    p.complete("a")
    p.start("b")
    p.result("b", {"test_mae": 0.5, "val_mae": 0.3}, dict(cfg, features_label="cgcnn"))
    p.complete("b")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].endswith("best validation MAE -")
    assert lines[-1] == f"[sweep] 2/2 done, 0 running, 0 error(s); best validation MAE 0.3 ({TASK}/cgcnn/cgcnn)"
    assert not any("test" in line for line in lines)


# ------------------------------------------------------------------------------------------ busy stores, signals


@pytest.fixture
def stub_ray(monkeypatch):
    """run_sweep with Ray stubbed out: ``seen["todo"]`` gets what would be launched, ``seen["claims"]`` the claim
    files while it runs, and ``seen["during"]`` (if set) runs in the middle of the trials."""
    seen: dict = {"todo": None, "claims": None, "during": None}
    monkeypatch.setattr(sweep, "init_ray", lambda *a, **k: None)

    def run_trials(configs, **kw):
        seen["todo"] = configs
        seen["claims"] = sorted(p.stem for p in (Path(configs[0]["store"]) / "claims").glob("*.json"))
        if seen["during"]:
            seen["during"]()
        return sweep.SweepResult(len(configs), 0, [], [])

    monkeypatch.setattr(sweep, "run_trials", run_trials)
    return seen


def _plant_claim(store: Path, rid: str, pid: int) -> None:
    from bench.claims import claim_path

    p = claim_path(store, rid)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "token": "other", "time": "now"}))


SMALL_RUN = ["run", "--suite", "smoke", "--encoder", "cgcnn", "--tasks", TASK, "--fractions", "0.5,1.0",
             "--seeds", "0,1", "--epochs", "1", "--no-leaderboard"]


def _small_run_ids(store: Path) -> list[str]:
    from bench.cli import build_parser
    from bench.commands.run import build_plan
    from bench.plugins import load_plugins

    args = build_parser().parse_args(SMALL_RUN + ["--store", str(store)])
    args.plugins = load_plugins(args.plugin)
    plan = build_plan(args)
    return [sweep.planned_run_id(c) for c in sweep.trial_configs(plan, {})]


def test_a_second_sweep_skips_the_trials_a_live_sweep_is_running(tmp_path, stub_ray, capsys):
    """Two `bench run` on one store: the second runs only what the first has not claimed, and says so."""
    from bench.cli import main

    store = tmp_path.resolve()
    rids = _small_run_ids(store)
    assert len(rids) == 4
    for rid in rids[:2]:  # held by another sweep: a live process on this host
        _plant_claim(store, rid, os.getppid())
    assert main(SMALL_RUN + ["--store", str(store)]) == 0
    err = capsys.readouterr().err
    assert [sweep.planned_run_id(c) for c in stub_ray["todo"]] == rids[2:]
    assert stub_ray["claims"] == sorted(rids)  # its own two claimed while they run
    assert sorted(p.stem for p in (store / "claims").glob("*.json")) == sorted(rids[:2])  # its own released
    assert "4 trials in the grid; 0 already in" in err and "2 claimed by another live sweep (running or queued there); launching 2" in err
    assert "2 left to another live sweep on this store" in err.splitlines()[-1]
    # the other sweep died (its pid is gone): its claims are stale and taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for rid in rids[:2]:
        _plant_claim(store, rid, dead.pid)
    assert main(SMALL_RUN + ["--store", str(store)]) == 0
    assert len(stub_ray["todo"]) == 4 and "launching 4" in capsys.readouterr().err


class _SignalReachedTheTest(Exception):
    pass


@pytest.fixture
def guard_signals():
    """Without the sweep's own handlers a SIGINT would stop pytest and a SIGTERM kill it: turn both into a test
    failure instead, and check the sweep put these handlers back."""
    def guard(signum, frame):
        raise _SignalReachedTheTest(signal.Signals(signum).name)

    old = {s: signal.signal(s, guard) for s in (signal.SIGINT, signal.SIGTERM)}
    yield guard
    for s, h in old.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_sweep_stops_cleanly_and_says_how_to_resume(tmp_path, stub_ray, guard_signals, capsys,
                                                                sig, code):
    from bench.cli import main

    store = tmp_path.resolve()
    stub_ray["during"] = lambda: (os.kill(os.getpid(), sig), time.sleep(10))
    tune_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    t0 = time.monotonic()
    assert main(SMALL_RUN + ["--store", str(store)]) == code
    assert time.monotonic() - t0 < 8
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"[sweep] interrupted ({signal.Signals(sig).name}); 0 of 4 trial(s) recorded; run the same "
                       "command again to resume (recorded trials are skipped)")
    assert not any("FAILED" in line or "finished" in line for line in err)  # interrupted trials are no failures
    assert len(stub_ray["claims"]) == 4 and not list((store / "claims").glob("*.json"))  # claims released
    assert signal.getsignal(signal.SIGINT) is guard_signals and signal.getsignal(signal.SIGTERM) is guard_signals
    assert os.environ.get("TUNE_DISABLE_SIGINT_HANDLER") == tune_env


def test_a_forked_child_ends_quietly_on_sigterm():
    # the graph builders' process pool forks inside the sweep; a pool ends its workers with SIGTERM, which must
    # kill them, not raise the sweep's KeyboardInterrupt (a traceback per worker in `make run`)
    import os
    import signal

    with sweep._StopOnSignals():
        pid = os.fork()
        if pid == 0:  # the child
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except BaseException:
                os._exit(3)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status

"""Suites -> Ray Tune trials: the benchmark grid (task x encoder x featurizer x label fraction x seed).

The protocol is that of the atom-embedding papers this benchmark compares (UNATE; CrysAtom, Mukherjee et al.,
LoG 2024): each objective's per-element table is pretrained once, then every (task, encoder, featurizer,
fraction, seed) run trains a supervised model with that featurizer. Ray Tune (Liaw et al., 2018) is only the
scheduler: each trial calls ``bench.runner.run_one`` with a store directory, and the records it writes there are
the source of truth; Ray's result folders are never read for the leaderboard.

This is the only module in crysbench that imports ray, and it does so lazily, so option checking, suites and
``bench run --help`` stay cheap and fail before any Ray process starts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.claims import ClaimSet
from bench.config import ConfigError, from_dict, load_yaml
from bench.paths import PACKAGE_DIR
from bench.registry import suggest


class SweepError(ValueError):
    """Bad sweep options (raised before Ray starts)."""


class SweepInterrupted(Exception):
    """The sweep stopped on SIGINT or SIGTERM. Ray is shut down; every finished trial's record is in the store,
    so running the same command again resumes (the store's records, not Tune's state, say what is done)."""

    def __init__(self, signum: int, recorded: int | None = None, total: int | None = None) -> None:
        self.signum = signum
        counts = f"; {recorded} of {total} trial(s) recorded" if total is not None else ""
        super().__init__(f"interrupted ({signal.Signals(signum).name}){counts}; run the same command again to "
                         "resume (recorded trials are skipped)")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


# --------------------------------------------------------------------------------------------------- suites


@dataclass(frozen=True)
class Suite:
    """A named benchmark budget. Flat YAML in configs/suites/<name>.yaml; every key is required to be known."""

    tasks: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    description: str = ""
    # the featurizer specs every (task, encoder) is trained with, besides each objective's table and the
    # --controls; one-hot is the leaderboard's baseline column (bench run --features overrides)
    featurizers: tuple[str, ...] = ("onehot",)
    epochs: int | None = None  # None: the encoder's reference epochs (configs/encoders/<encoder>.yaml)
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    data_dir: str | None = None  # "sample": the bundled sample; None: --data-dir / BENCH_DATA_DIR / cache
    pretrain_epochs: int | None = None
    pretrain_dim: int | None = None
    pretrain_corpus: str | None = None
    corpus_limit: int | None = None
    pretrain_batch_size: int | None = None
    # also drop corpus structures that match an excluded val/test structure from another source (the MP copy of
    # a JARVIS test material); the default; false: ids alone (bench pretrain --ids-only)
    match_structures: bool = True
    # how an objective's table enters an encoder that has an `injection` option (CartNet), each run as its own
    # column: encoder (the default: frozen table, the encoder's atom encoder), init (the table initialises a
    # trainable one: UNATE's way 1), linear (frozen, one Linear: way 2), direct (frozen, the first node state:
    # way 3, at the table's width); empty: the encoder's default only. Other encoders ignore it.
    injections: tuple[str, ...] = ()
    batch_size: int | None = None  # None: the encoder's reference batch size
    # KEY=VALUE overrides of the encoders' training settings for every run (as `bench train --train-option`);
    # epochs and batch_size have their own keys
    train_options: tuple[str, ...] = ()
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    name: str = ""  # filled from the file name


SUITE_FIELDS = tuple(f.name for f in dataclasses.fields(Suite) if f.name != "name")


def suite_dirs() -> list[Path]:
    """Where suites live: the source tree's configs/suites (editable installs, checkouts), then the copy
    installed as package data under bench/configs/suites."""
    return [PACKAGE_DIR.parent / "configs" / "suites", PACKAGE_DIR / "configs" / "suites"]


def available_suites() -> list[str]:
    names: set[str] = set()
    for d in suite_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def load_suite(name_or_path: str) -> Suite:
    """A suite by name (configs/suites/<name>.yaml) or by path to a YAML file."""
    p = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or p.is_file():
        path = p
        if not path.is_file():
            raise SweepError(f"suite file {name_or_path!r} does not exist")
    else:
        path = None
        for d in suite_dirs():
            if (d / f"{name_or_path}.yaml").is_file():
                path = d / f"{name_or_path}.yaml"
                break
        if path is None:
            raise SweepError(suggest(name_or_path, available_suites(), "suite"))
    data = load_yaml(path)
    if "name" in data:
        raise ConfigError(f"suite {path}: 'name' comes from the file name; remove it")
    suite = from_dict(Suite, data, what=f"suite {path.name}")
    suite = dataclasses.replace(suite, name=path.stem)
    check_suite(suite)
    return suite


def check_suite(s: Suite) -> None:
    """Value checks that types alone do not catch; messages name the option."""
    if not s.tasks:
        raise SweepError(f"suite {s.name or '?'}: tasks is empty")
    if not s.fractions:
        raise SweepError(f"suite {s.name or '?'}: fractions is empty")
    for f in s.fractions:
        if not (0.0 < f <= 1.0):
            raise SweepError(f"fraction {f!r} is outside (0, 1]: a label fraction of the training split")
    if not s.seeds:
        raise SweepError("seeds is empty: give at least one seed (e.g. --seeds 0,1,2)")
    for seed in s.seeds:
        if seed < 0:
            raise SweepError(f"seed {seed} is negative")
    for key in ("epochs", "train_limit", "val_limit", "test_limit", "pretrain_epochs", "pretrain_dim",
                "corpus_limit", "pretrain_batch_size"):
        v = getattr(s, key)
        if v is not None and v <= 0:
            raise SweepError(f"{key} must be positive, got {v}")
    if s.cpus_per_trial <= 0:
        raise SweepError(f"cpus_per_trial must be positive, got {s.cpus_per_trial}")
    if s.gpus_per_trial < 0:
        raise SweepError(f"gpus_per_trial must be >= 0, got {s.gpus_per_trial}")
    if s.gpus_per_trial > 1 and not float(s.gpus_per_trial).is_integer():
        raise SweepError(f"gpus_per_trial {s.gpus_per_trial}: a fraction of a GPU must be below 1")
    suite_train_options(s)
    if not s.featurizers:
        raise SweepError(f"suite {s.name or '?'}: featurizers is empty: give at least one, e.g. [onehot]")
    if len(set(s.featurizers)) != len(s.featurizers):
        raise SweepError(f"suite {s.name or '?'}: a featurizer is repeated: {','.join(s.featurizers)}")
    if len(set(s.fractions)) != len(s.fractions) or len(set(s.seeds)) != len(s.seeds):
        raise SweepError("fractions and seeds must not repeat")
    for m in s.injections:
        if m not in INJECTIONS:
            raise SweepError(f"suite {s.name or '?'}: injections " + suggest(m, list(INJECTIONS), "injection"))
    if len(set(s.injections)) != len(s.injections):
        raise SweepError(f"suite {s.name or '?'}: an injection is repeated: {','.join(s.injections)}")


def suite_train_options(s: Suite) -> dict[str, str]:
    """The suite's ``train_options`` as a dict, keys checked against the training settings (did-you-mean)."""
    from bench.commands import key_values
    from bench.settings import TrainSettings

    opts = key_values(list(s.train_options), f"suite {s.name or '?'}: train_options entry")
    known = [f.name for f in dataclasses.fields(TrainSettings)]
    for k in opts:
        if k in ("epochs", "batch_size"):
            raise SweepError(f"suite {s.name or '?'}: set {k} with the suite's own {k!r} key, not in train_options")
        if k not in known:
            raise SweepError(f"suite {s.name or '?'}: train_options " + suggest(k, known, "train setting"))
    return opts


def parse_list(text: str | None, kind: type, option: str) -> tuple | None:
    """'0.1,0.25' -> (0.1, 0.25); None stays None (no override). An empty list is an error."""
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise SweepError(f"{option} is empty: give a comma-separated list")
    out = []
    for t in items:
        try:
            out.append(kind(t))
        except ValueError:
            raise SweepError(f"{option}: {t!r} is not a valid {kind.__name__}") from None
    return tuple(out)


def override(suite: Suite, **changes: Any) -> Suite:
    """Command-line values (not None) replace suite fields; the result is checked again."""
    changes = {k: v for k, v in changes.items() if v is not None}
    for k in changes:
        if k not in SUITE_FIELDS:
            raise SweepError(suggest(k, list(SUITE_FIELDS), "suite option"))
    s = dataclasses.replace(suite, **changes)
    check_suite(s)
    return s


# ----------------------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep needs, resolved and checked before Ray starts."""

    suite: Suite
    encoders: tuple[str, ...]
    objectives: tuple[str, ...]
    controls: bool
    store: Path
    plugins: tuple[str, ...] = ()
    max_retries: int = 2
    address: str | None = None
    device: str = "auto"
    data_dir: str | None = None
    # tasks whose validation and test structures the pretraining corpus also leaves out: the suite file's own
    # tasks, which --tasks may have replaced by others or a subset, so that a subset run finds (and pools with) the suite's tables
    # instead of pretraining a table of its own for hours
    also_exclude: tuple[str, ...] = ()


def check_names(encoders: tuple[str, ...], objectives: tuple[str, ...], tasks: tuple[str, ...]) -> None:
    """Unknown encoder/objective/task -> RegistryError with did-you-mean (plugins must already be loaded)."""
    from bench.registry import ENCODERS, OBJECTIVES, TASKS

    if not encoders:
        raise SweepError("no encoder given: --encoder cgcnn[,alignn,...]")
    for e in encoders:
        ENCODERS.entry(e)
    for o in objectives:
        OBJECTIVES.entry(o)
    for t in tasks:
        TASKS.entry(t)
    for label, names in (("encoder", encoders), ("objective", objectives), ("task", tasks)):
        if len(set(names)) != len(names):
            raise SweepError(f"a {label} is repeated: {','.join(names)}")


def check_featurizers(specs: tuple[str, ...]) -> None:
    """Cheap checks of a suite's featurizer specs before anything is pretrained (plugins must be loaded): the
    name (did-you-mean), a published table's name, a table file's existence."""
    from bench.registry import FEATURIZERS

    for spec in specs:
        name, _, arg = spec.partition(":")
        FEATURIZERS.entry(name)
        if name == "published":
            from bench.published import entry

            entry(arg)
        elif name in ("embedding", "embedding-init"):
            if not arg:
                raise SweepError(f"featurizer {spec!r} needs a table: {name}:<path.json>")
            if not Path(arg).expanduser().is_file():
                raise SweepError(f"featurizer {spec!r}: table file {arg!r} does not exist")


def _column(spec: str) -> dict:
    name, _, arg = spec.partition(":")
    if name in ("embedding", "embedding-init") and arg:
        # absolute, so that a worker with another working directory reads the same file; the runner labels it
        return {"features": f"{name}:{Path(arg).expanduser().resolve()}", "features_label": None}
    return {"features": spec, "features_label": spec}


CONTROL_FEATURIZERS = ("random", "crysatom-published", "cgcnn")
INJECTIONS = ("encoder", "init", "linear", "direct")


def featurizer_columns(tables: dict[str, Path], controls: bool, table_dim: int | Iterable[int] | None,
                       featurizers: tuple[str, ...] = ("onehot",)) -> list[dict]:
    """The featurizers every (task, encoder) is trained with: the suite's ``featurizers`` (default one-hot, the
    baseline), each objective's table, and with ``controls`` a random table of each table width (``table_dim``:
    one width or several, each objective pretraining at its own), the published CrysAtom table and CGCNN's bits
    (each once, where the suite did not list it already)."""
    cols = [_column(spec) for spec in featurizers]
    for obj, path in tables.items():
        cols.append({"features": f"embedding:{Path(path).resolve()}", "features_label": obj})
    if controls:
        # The random control has the tables' width, or a difference could be the width, not chemistry.
        dims = sorted({table_dim} if isinstance(table_dim, int) else set(table_dim or ()))
        for w in dims or [None]:
            label = "random" if len(dims) <= 1 else f"random-{w}"
            cols.append({"features": "random" if w is None else f"random:0:{w}", "features_label": label})
        cols.append({"features": "crysatom-published", "features_label": "crysatom-published"})
        cols.append({"features": "cgcnn", "features_label": "cgcnn"})
    seen: set[str] = set()
    return [c for c in cols if not (c["features"] in seen or seen.add(c["features"]))]


def encoder_columns(encoder: str, columns: list[dict], tables: dict[str, Path],
                    injections: tuple[str, ...]) -> list[tuple[dict, dict]]:
    """(featurizer column, encoder options) pairs of one encoder. Without ``injections``, or for an encoder with
    no ``injection`` option (CGCNN, ALIGNN, MEGNet), every column once with no options (the trial configs, and so
    the run ids, of before injections existed). Otherwise per mode (Suite.injections): ``encoder`` every column
    as it is; ``linear`` every column with injection=linear (one-hot included, so that table has its baseline);
    ``init`` each objective's table as ``embedding-init:`` (label ``<objective>-init``); ``direct`` each
    objective's table and random control with injection=direct at the table's width (``dim``)."""
    from bench.encoders.base import encoder_class

    fields = {f.name for f in dataclasses.fields(encoder_class(encoder).Config)}
    if not injections or "injection" not in fields:
        return [(c, {}) for c in columns]
    by_spec = {f"embedding:{Path(p).resolve()}": (obj, p) for obj, p in tables.items()}
    out: list[tuple[dict, dict]] = []
    for mode in injections:
        if mode == "encoder":
            out += [(c, {}) for c in columns]
        elif mode == "linear":
            out += [(c, {"injection": "linear"}) for c in columns]
        elif mode == "init":
            out += [({"features": "embedding-init:" + spec.partition(":")[2], "features_label": f"{obj}-init"}, {})
                    for spec, (obj, _) in by_spec.items()]
        elif mode == "direct":
            if "dim" not in fields:
                raise SweepError(f"injection 'direct' sets the width of encoder {encoder!r}, which has no 'dim' option")
            for c in columns:
                spec = c["features"]
                if spec in by_spec:
                    width = table_width(by_spec[spec][1])
                elif spec.startswith("random:") and spec.count(":") == 2:
                    width = int(spec.rsplit(":", 1)[1])
                else:
                    continue  # a featurizer of its own width (one-hot, CGCNN bits): no direct form
                out.append((c, {"injection": "direct", "dim": width}))
    return out


def trial_configs(plan: SweepPlan, tables: dict[str, Path],
                  table_dim: int | Iterable[int] | None = None) -> list[dict]:
    """The run_one configs of the whole grid, in a stable order (seed, task, encoder, fraction, featurizer):
    seed first, so a sweep stopped part-way (a long one runs over several sessions) has left whole tables, every
    featurizer beside one-hot, for its first seeds rather than every seed of a few featurizers."""
    s = plan.suite
    data_dir = plan.data_dir if plan.data_dir is not None else s.data_dir
    columns = featurizer_columns(tables, plan.controls, table_dim, s.featurizers)
    per_encoder = {enc: encoder_columns(enc, columns, tables, s.injections) for enc in plan.encoders}
    configs = []
    for seed in s.seeds:
        for task in s.tasks:
            for enc in plan.encoders:
                for frac in s.fractions:
                    for col, enc_opts in per_encoder[enc]:
                        cfg = {
                            "task": task,
                            "encoder": enc,
                            **col,
                            "fraction": float(frac),
                            "seed": int(seed),
                            "epochs": s.epochs,
                            "device": plan.device,
                            "data_dir": data_dir,
                            "plugins": list(plan.plugins),
                            "train_limit": s.train_limit,
                            "val_limit": s.val_limit,
                            "test_limit": s.test_limit,
                            "store": str(plan.store),
                            "progress": False,
                        }
                        options = suite_train_options(s)
                        if s.batch_size is not None:
                            options["batch_size"] = s.batch_size
                        if options:
                            cfg["train_options"] = options
                        if enc_opts:
                            cfg["encoder_options"] = enc_opts
                        configs.append(cfg)
    return configs


def pretrain_config(plan: SweepPlan, objective: str) -> dict:
    """The ensure_table config for one objective: the suite's pretraining budget; the corpus excludes the
    validation and test structures of every evaluated task (the leakage rule in protocol.md) and of the suite's
    own tasks when the command line changed them (``plan.also_exclude``)."""
    s = plan.suite
    exclude = list(s.tasks) + [t for t in plan.also_exclude if t not in s.tasks]
    cfg: dict[str, Any] = {
        "objective": objective,
        "exclude_tasks": exclude,
        "data_dir": plan.data_dir if plan.data_dir is not None else s.data_dir,
        "plugins": list(plan.plugins),
        "seed": 0,
    }
    for key, src in (("epochs", s.pretrain_epochs), ("dim", s.pretrain_dim), ("corpus", s.pretrain_corpus),
                     ("corpus_limit", s.corpus_limit), ("batch_size", s.pretrain_batch_size)):
        if src is not None:
            cfg[key] = src
    cfg["match_structures"] = s.match_structures  # said either way: bench pretrain's default is to match
    return cfg


def planned_run_id(config: dict) -> str:
    """The run id run_one will give ``config``, computed without training (bench.runner.run_id)."""
    from bench import runner

    # The device is not part of the run id, and the trial's device need not exist on the driver (a CPU driver
    # joining a GPU cluster with --device cuda), so resolve the id as if on the CPU.
    return runner.run_id({**config, "device": "cpu"})


def record_exists(config: dict) -> bool:
    """True when the store already holds an ok record for this config (so the trial is not launched)."""
    return _has_ok_record(config["store"], planned_run_id(config))


def _has_ok_record(store: str | Path, rid: str) -> bool:
    from bench.records import RecordError, find_record

    try:
        rec = find_record(store, rid)
    except RecordError:  # unreadable: run it again (run_one rewrites it)
        return False
    return rec is not None and rec["status"] == "ok"


# ------------------------------------------------------------------------------------------ checks, devices


# Is a gRPC server there (Ray's GCS and Ray Client server are)? The HTTP/2 connection preface with an empty
# SETTINGS frame (RFC 9113 section 3.4), then one unary call; a gRPC server answers any path with HTTP status 200
# (the gRPC status travels in trailers), which HPACK encodes as the single byte 0x88. A plain TCP listener, an HTTP/1
# server or an HTTP/2 proxy with nothing behind it does not.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_DATA, _H2_HEADERS, _H2_RST, _H2_SETTINGS, _H2_GOAWAY = 0, 1, 3, 4, 7
_GRPC_PROBE_PATH = b"/ray.rpc.NodeInfoGcsService/GetClusterId"


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _hpack_literal(name_index: int | None, value: bytes, name: bytes = b"") -> bytes:
    """A header 'literal without indexing', no Huffman coding (all values here are under 127 bytes)."""
    if name_index is None:
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
    prefix = bytes([name_index]) if name_index < 15 else bytes([15, name_index - 15])
    return prefix + bytes([len(value)]) + value


def split_address(address: str) -> tuple[str, int]:
    """'[ray://]host:port' (IPv6 hosts in brackets) -> (host, port); SweepError naming --address otherwise."""
    hostport = address.split("://", 1)[-1]
    if ":" not in hostport:
        raise SweepError(f"--address {address!r}: expected host:port (e.g. 10.0.0.5:6379)")
    host, port_s = hostport.rsplit(":", 1)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_s)
    except ValueError:
        raise SweepError(f"--address {address!r}: port {port_s!r} is not a number") from None
    if not host or not 0 < port < 65536:
        raise SweepError(f"--address {address!r}: expected host:port (e.g. 10.0.0.5:6379)")
    return host, port


def _grpc_problem(sock: socket.socket, authority: str, deadline: float) -> str | None:
    """One gRPC call on ``sock``: None when the response headers carry HTTP status 200 before ``deadline``,
    else what went wrong, in a few words."""
    block = (b"\x83\x86"  # :method POST, :scheme http (HPACK static table)
             + _hpack_literal(4, _GRPC_PROBE_PATH) + _hpack_literal(1, authority.encode("idna"))
             + _hpack_literal(31, b"application/grpc") + _hpack_literal(None, b"trailers", b"te"))
    message = bytes(5)  # an uncompressed, empty protobuf message
    sock.sendall(_H2_PREFACE + _h2_frame(_H2_HEADERS, 0x4, 1, block) + _h2_frame(_H2_DATA, 0x1, 1, message))
    buf = b""

    def read(n: int) -> bytes:
        nonlocal buf
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out

    try:
        first = True
        while True:
            header = read(9)
            length, kind, flags = int.from_bytes(header[:3], "big"), header[3], header[4]
            stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            if first and kind != _H2_SETTINGS:  # an HTTP/2 server's first frame is SETTINGS
                return "it does not speak HTTP/2, as gRPC does"
            first = False
            payload = read(length)
            if kind == _H2_SETTINGS and not flags & 0x1:
                sock.sendall(_h2_frame(_H2_SETTINGS, 0x1, 0, b""))  # acknowledge, as the protocol requires
            elif kind == _H2_GOAWAY or (kind == _H2_RST and stream == 1):
                return "it refused the gRPC call"
            elif kind == _H2_HEADERS and stream == 1:
                skip = (1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0)  # PADDED pad length, PRIORITY
                return None if payload[skip:skip + 1] == b"\x88" else "it answered, but not as a gRPC server"
    except socket.timeout:
        return "no answer"
    except OSError:
        return "it closed the connection without a gRPC answer"


def check_address(address: str, timeout: float = 3.0, handshake_timeout: float = 10.0) -> None:
    """Fail fast, in one line, unless ``address`` is a Ray head that answers: a TCP connect (``timeout``),
    then one gRPC call (``handshake_timeout``), since ray.init on a port where something else listens
    retries forever, and on an unreachable one for half a minute with tracebacks. 'auto' and 'local' are
    passed through."""
    if address in ("auto", "local"):
        return
    host, port = split_address(address)
    deadline = time.monotonic() + timeout + handshake_timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise SweepError(
            f"--address {address}: cannot connect to {host}:{port} ({e}). Start the head node with "
            f"`ray start --head --port {port}` or drop --address to run locally."
        ) from None
    with sock:
        problem = _grpc_problem(sock, f"{host}:{port}", deadline)
    if problem == "no answer":
        problem = f"no answer in {timeout + handshake_timeout:g} s"
    if problem:
        raise SweepError(
            f"--address {address}: {host}:{port} accepts connections but is not a Ray head ({problem}); give the "
            "address `ray start --head` printed (port 6379 by default) or drop --address to run locally."
        )


def choose_device(requested: str, gpu_ids: list, cuda_available: bool) -> str:
    """The torch device a trial trains on. 'auto': the GPU Ray assigned to this trial (Ray sets
    CUDA_VISIBLE_DEVICES to it, so it is 'cuda' = index 0 of the visible set), else the CPU. Logical GPUs
    with no CUDA (tests) give the CPU."""
    if requested != "auto":
        return requested
    if gpu_ids and cuda_available:
        return "cuda"
    return "cpu"


def trial_environment(requested_device: str = "auto") -> dict:
    """Where this trial runs and on what: Ray's GPU ids, CUDA_VISIBLE_DEVICES, the chosen device, node, pid.
    Called inside a Ray worker."""
    import ray

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]  # reported as "0,2" text: Tune's loggers refuse lists
    try:
        import torch

        cuda = bool(gpu_ids) and torch.cuda.is_available()
    except ImportError:
        cuda = False
    ctx = ray.get_runtime_context()
    return {
        "gpu_ids": ",".join(gpu_ids),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "device": choose_device(requested_device, gpu_ids, cuda),
        "node_id": ctx.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }


def run_trial(params: dict) -> None:
    """The product trainable: pick the device, call run_one (it writes the record to the store), report."""
    from ray import tune

    from bench import runner

    config = dict(params["trial"])
    env = trial_environment(config.get("device", "auto"))
    config["device"] = env["device"]
    rec = runner.run_one(config)
    if rec.get("status") != "ok":
        raise RuntimeError(f"run {rec.get('run_id')} ended with status {rec.get('status')!r}: {rec.get('error')}")
    tune.report({"test_mae": float(rec["test_mae"]), "val_mae": float(rec["val_mae"]),
                 "run_id": rec["run_id"], **env})


# ------------------------------------------------------------------------------------------------- Ray


def _local_resources(cpus_per_trial: float, gpus_per_trial: float) -> dict:
    """Resources for a local Ray instance: every CPU; the GPUs torch sees (or as many as one trial asks for,
    so that a --gpus-per-trial request on a GPU-less machine fails clearly rather than hanging)."""
    num_cpus = max(os.cpu_count() or 1, int(cpus_per_trial + 0.999))
    num_gpus = 0
    try:
        import torch

        num_gpus = torch.cuda.device_count()
    except ImportError:
        pass
    return {"num_cpus": num_cpus, "num_gpus": num_gpus}


def init_ray(address: str | None, cpus_per_trial: float, gpus_per_trial: float,
             num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join ``address`` (checked first), or start a local instance bound to loopback with no dashboard."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":  # Ray's name for a new local instance: the loopback-only one below, not a join
        address = None
    if address:
        check_address(address)
        # Ray enables token authentication by default; a driver joining such a cluster must send the token
        # (~/.ray/auth_token, written by `ray start`), which Ray itself only does for clusters it starts.
        if "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()
        ):
            os.environ["RAY_AUTH_MODE"] = "token"
        host = split_address(address)[0]
        if host in ("127.0.0.1", "localhost", "::1"):
            # A cluster on loopback (tests, one machine): the driver must register as 127.0.0.1 too.
            with _loopback_only():
                ray.init(address=address, _node_ip_address="127.0.0.1", log_to_driver=False,
                         logging_level="warning")
        else:
            ray.init(address=address, log_to_driver=False, logging_level="warning")
        return
    res = _local_resources(cpus_per_trial, gpus_per_trial)
    if num_cpus is not None:
        res["num_cpus"] = num_cpus
    if num_gpus is not None:
        res["num_gpus"] = num_gpus
    check_local_gpus(gpus_per_trial, res["num_gpus"])
    with _loopback_only(), _quiet_logger(_RAY_AUTH_LOGGER):
        # address="local": a new instance, never the last `ray start` cluster Ray remembers in /tmp/ray.
        # Ray turns token authentication on for it by default and warns so in every run: kept, not printed.
        ray.init(address="local", num_cpus=res["num_cpus"], num_gpus=res["num_gpus"], include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="warning")


def check_local_gpus(gpus_per_trial: float, available: int | None = None) -> None:
    """A local sweep asking for more GPUs per trial than the machine has would wait forever in Ray."""
    if available is None:
        available = _local_resources(1, gpus_per_trial)["num_gpus"]
    if gpus_per_trial > available:
        raise SweepError(
            f"gpus_per_trial {gpus_per_trial:g}: this machine has {available} GPU(s) visible to torch; "
            "use --gpus-per-trial 0 or join a GPU cluster with --address"
        )


_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise one logger's threshold for the duration (Ray's start-up notices that every run would print)."""
    log = logging.getLogger(name)
    old = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(old)


@contextmanager
def _loopback_only():
    """Keep a local Ray instance on loopback. ray.init turns 127.0.0.1 into the machine's routable address
    unless Ray's single-machine mode is on (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read by ray_constants at
    import and passed to the processes ray.init spawns); with it, GCS, raylet, agents and workers bind
    127.0.0.1 only (checked in tests/test_sweep.py). Restored afterwards so that joining a cluster later works."""
    from ray._private import ray_constants

    key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    old_env, old_const = os.environ.get(key), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old_env


class _StopOnSignals:
    """Inside, SIGINT and SIGTERM raise KeyboardInterrupt in the main thread, so the sweep unwinds through its
    ``finally`` blocks (Ray shut down, claims released); ``signum`` says which signal it was (Ray's waits replace
    the handler's exception by a plain KeyboardInterrupt). Tune's own SIGINT handler is off: it would save its
    state, advise Tuner.restore and report every unfinished trial as failed, while re-running the command is what
    resumes. ray.init installs a SIGTERM handler of its own (exit 1 with a stack dump): call ``arm`` after it."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)
    _ENV = "TUNE_DISABLE_SIGINT_HANDLER"

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._old_env: str | None = None
        self._main = threading.current_thread() is threading.main_thread()  # handlers belong to the main thread
        self._pid = os.getpid()

    def _stop(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            # a forked child (the graph builders' process pool) inherits this handler: a pool ends its workers
            # with SIGTERM, which must end them quietly, not raise a KeyboardInterrupt traceback in each
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        raise KeyboardInterrupt

    def arm(self) -> None:
        if self._main:
            for sig in self._SIGNALS:
                signal.signal(sig, self._stop)

    def __enter__(self) -> "_StopOnSignals":
        if self._main:
            self._old = {sig: signal.getsignal(sig) for sig in self._SIGNALS}
            self.arm()
        self._old_env = os.environ.get(self._ENV)
        os.environ[self._ENV] = "1"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old_env is None:
            os.environ.pop(self._ENV, None)
        else:
            os.environ[self._ENV] = self._old_env
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class _ProgressCallback:
    """One line per change: trials done / running / failed and the best validation MAE so far (never the test
    MAE: a running best on the test set invites selecting on it)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.running: set[str] = set()
        self.done = 0
        self.errors = 0
        self.best: tuple[float, str] | None = None
        self.results: dict[str, dict] = {}
        self.failed: dict[str, str] = {}
        self._last = ""

    def _line(self) -> None:
        best = (f"best validation MAE {self.best[0]:.4g} ({self.best[1]})" if self.best
                else "best validation MAE -")
        line = (f"[sweep] {self.done}/{self.total} done, {len(self.running)} running, "
                f"{self.errors} error(s); {best}")
        if line != self._last:
            # sys.stderr looked up here, not stored: Tune pickles its callbacks with the experiment state.
            print(line, file=sys.stderr, flush=True)
            self._last = line

    def start(self, tid: str) -> None:
        self.running.add(tid)
        self._line()

    def result(self, tid: str, result: dict, cfg: dict) -> None:
        if "test_mae" in result:
            self.results[tid] = result
            label = f"{cfg.get('task')}/{cfg.get('encoder')}/{cfg.get('features_label')}"
            mae = float(result["val_mae"]) if "val_mae" in result else None
            if mae is not None and (self.best is None or mae < self.best[0]):
                self.best = (mae, label)

    def complete(self, tid: str) -> None:
        self.running.discard(tid)
        self.done += 1
        self._line()

    def error(self, tid: str, msg: str) -> None:
        self.running.discard(tid)
        self.errors += 1
        self.failed[tid] = msg
        self._line()


def _make_callback(progress: _ProgressCallback):
    from ray import tune

    class Cb(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            progress.start(trial.trial_id)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            progress.result(trial.trial_id, result, trial.config.get("trial", {}))

        def on_trial_complete(self, iteration, trials, trial, **info):
            progress.complete(trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            progress.error(trial.trial_id, str(getattr(trial, "error_file", "") or "error"))

    return Cb()


@dataclass
class SweepResult:
    launched: int
    skipped: int
    results: list[dict]  # one per finished trial: the reported metrics + the trial config
    failed: list[dict]  # configs of trials that failed after retries
    busy: int = 0  # trials skipped because another live sweep on the same store claimed them


def run_trials(configs: list[dict], *, cpus_per_trial: float, gpus_per_trial: float, storage_path: Path,
               max_retries: int, trainable: Callable[[dict], None] = run_trial,
               name: str | None = None) -> SweepResult:
    """Run ``configs`` as one Tune grid (Ray must already be initialised). Failed trials are retried
    ``max_retries`` times, then returned in ``failed`` (never dropped)."""
    from ray import tune

    if not configs:
        return SweepResult(0, 0, [], [])
    storage_path = Path(storage_path).resolve()
    storage_path.mkdir(parents=True, exist_ok=True)
    progress = _ProgressCallback(len(configs))
    # Our own one-line progress replaces Tune's tables (Tune's result files are kept but never read).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        param_space={"trial": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(reuse_actors=False),
        run_config=tune.RunConfig(
            name=name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=str(storage_path),
            failure_config=tune.FailureConfig(max_failures=max_retries),
            callbacks=[_make_callback(progress)],
            verbose=0,
        ),
    )
    grid = tuner.fit()
    results, failed = [], []
    for r in grid:
        cfg = (r.config or {}).get("trial", {})
        if r.error is not None or "test_mae" not in (r.metrics or {}):
            failed.append({"config": cfg, "error": str(r.error).strip().splitlines()[-1] if r.error else "no result"})
        else:
            results.append({**{k: v for k, v in r.metrics.items() if not isinstance(v, dict)}, "config": cfg})
    return SweepResult(len(configs), 0, results, failed)


# ------------------------------------------------------------------------------------------- the command


def table_width(path: Path) -> int:
    from bench.embeddings import load_table

    return int(load_table(path).dim)


def pretrain_tables(plan: SweepPlan, progress: bool = True) -> dict[str, Path]:
    """Each objective's table, pretrained once (ensure_table caches by config content), copied into
    ``<store>/tables/`` so a store holds the records and the tables they were trained with. A table the store
    already holds under the same content key is used as it is: a sweep resumed on another machine (whose cache
    is empty) finds the committed table instead of pretraining for hours again."""
    from bench.embeddings import TableError, load_table
    from bench.paths import atomic_path
    from bench.pretrain import ensure_table, table_path

    tables = {}
    for obj in plan.objectives:
        cfg = pretrain_config(plan, obj)
        stored = (plan.store / "tables" / table_path(cfg).name).resolve()
        if stored.is_file():
            try:
                load_table(stored)
                print(f"[sweep] table for objective {obj!r} found in the store: {stored}", file=sys.stderr)
                tables[obj] = stored
                continue
            except TableError as e:
                print(f"[sweep] stored table {stored} is unreadable ({e}); pretraining again", file=sys.stderr)
        others = sorted(p.name for p in (plan.store / "tables").glob(f"{obj}-*.json") if p.resolve() != stored)
        note = (f"; the store's {', '.join(others)} came from another pretraining config (budget, corpus, "
                f"left-out tasks or code version)" if others else "")
        print(f"[sweep] pretraining table for objective {obj!r}, corpus without the val/test structures of "
              f"{', '.join(cfg['exclude_tasks']) or 'no task'} (cached when already built){note}", file=sys.stderr)
        cached = Path(ensure_table(cfg, progress=progress))
        kept = stored  # named by the content key, as the cache file
        if not kept.exists() or kept.read_bytes() != cached.read_bytes():
            with atomic_path(kept) as tmp:
                shutil.copyfile(cached, tmp)
        tables[obj] = kept
    return tables


def run_sweep(plan: SweepPlan, *, num_cpus: int | None = None, num_gpus: int | None = None,
              trainable: Callable[[dict], None] = run_trial, progress: bool = True) -> SweepResult:
    """Pretrain, build the grid, skip trials whose record exists or that another live sweep on the store has
    claimed, run the rest on Ray, shut Ray down. SIGINT/SIGTERM stop it cleanly: SweepInterrupted."""
    if (plan.address or os.environ.get("RAY_ADDRESS") or "local") == "local" and num_gpus is None:
        check_local_gpus(plan.suite.gpus_per_trial)  # before hours of pretraining, not after
    grid: list[dict] = []
    with _StopOnSignals() as stop:
        try:
            with ClaimSet(plan.store) as claims:
                return _sweep(plan, claims, stop, grid, num_cpus=num_cpus, num_gpus=num_gpus, trainable=trainable,
                              progress=progress)
        except KeyboardInterrupt:
            recorded = sum(record_exists(c) for c in grid) if grid else None
            raise SweepInterrupted(stop.signum or signal.SIGINT, recorded, len(grid) if grid else None) from None


def _sweep(plan: SweepPlan, claims: ClaimSet, stop: _StopOnSignals, grid: list[dict], *, num_cpus: int | None,
           num_gpus: int | None, trainable: Callable[[dict], None], progress: bool) -> SweepResult:
    import ray

    tables = pretrain_tables(plan, progress=progress and sys.stderr.isatty()) if plan.objectives else {}
    # each objective at its own width (UNATE 128, CrysAtom 200): one random control per width
    widths = {table_width(p) for p in tables.values()}
    configs = trial_configs(plan, tables, widths)
    grid.extend(configs)
    todo, busy = [], 0
    for c in configs:
        rid = planned_run_id(c)
        if _has_ok_record(plan.store, rid):
            continue
        if not claims.claim(rid):
            busy += 1
        elif _has_ok_record(plan.store, rid):  # finished by another sweep between the two looks
            claims.release(rid)
        else:
            todo.append(c)
    skipped = len(configs) - len(todo) - busy
    running = f"{busy} claimed by another live sweep (running or queued there); " if busy else ""
    print(f"[sweep] {len(configs)} trials in the grid; {skipped} already in {plan.store}; {running}"
          f"launching {len(todo)}", file=sys.stderr)
    if not todo:
        return SweepResult(0, skipped, [], [], busy)
    init_ray(plan.address, plan.suite.cpus_per_trial, plan.suite.gpus_per_trial, num_cpus, num_gpus)
    try:
        stop.arm()  # again: ray.init replaced the SIGTERM handler
        res = run_trials(todo, cpus_per_trial=plan.suite.cpus_per_trial, gpus_per_trial=plan.suite.gpus_per_trial,
                         storage_path=plan.store / "ray", max_retries=plan.max_retries, trainable=trainable)
    finally:
        ray.shutdown()
    res.skipped, res.busy = skipped, busy
    return res

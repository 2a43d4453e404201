"""Run records: schema, run id, atomic one-file-per-run storage."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench import records
from bench.records import RecordError, read_records, run_id, validate_record, write_record

IDENTITY = {
    "task": "dft_3d_formation_energy_peratom",
    "task_version": "1",
    "encoder": "cgcnn",
    "encoder_version": "1",
    "encoder_options": {"hidden": 16, "layers": 2},
    "featurizer": "onehot",
    "featurizer_version": "1",
    "table_hash": None,
    "fraction": 0.5,
    "seed": 3,
    "train_settings": {"optimizer": "sgd", "lr": 0.01, "epochs": 3, "batch_size": 8},
    "limits": {"train": 40, "val": 10, "test": 10},
    "graph_spec": "cgcnn",
    "graph_code_version": "1",
}


def make_record(**over):
    ident = copy.deepcopy(IDENTITY)
    rec = {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": run_id(ident),
        "identity": ident,
        "status": "ok",
        "created_at": "2026-11-22T00:00:00+00:00",
        "git_sha": None,
        "versions": {"torch": "2.2.1"},
        "hardware": {"cpu": "x"},
        "device": "cpu",
        "task": ident["task"],
        "unit": "eV/atom",
        "dataset_key": "dft_3d_2021",
        "encoder": "cgcnn",
        "encoder_version": "1",
        "encoder_options": ident["encoder_options"],
        "featurizer": "onehot",
        "featurizer_version": "1",
        "features_label": "onehot",
        "table_hash": None,
        "train_settings": ident["train_settings"],
        "fraction": 0.5,
        "seed": 3,
        "n_train": 20,
        "n_val": 2,
        "n_test": 2,
        "val_mae": 0.5,
        "test_mae": 0.6,
        "selected_epoch": 2,
        "epochs": 3,
        "epochs_run": 3,
        "n_params": 1234,
        "wall_time_s": 1.5,
        "predictions": {"ids": ["a", "b"], "targets": [0.1, 0.2], "predictions": [0.3, 0.4]},
        "curve": {"train_loss": [1.0, 0.8, 0.7], "val_mae": [0.7, 0.5, 0.6]},
    }
    rec.update(over)
    return rec


def test_round_trip(tmp_path):
    rec = make_record()
    path = write_record(tmp_path, rec)
    assert path == tmp_path / "records" / f"{rec['run_id']}.json"
    assert read_records(tmp_path) == [rec]
    assert records.find_record(tmp_path, rec["run_id"]) == rec
    assert records.find_record(tmp_path, "0" * 20) is None


def test_one_file_per_run_id_and_failed_never_replaces_ok(tmp_path):
    rec = make_record()
    write_record(tmp_path, rec)
    write_record(tmp_path, make_record(test_mae=9.0))  # same run id: the first ok record is kept
    failed = {k: v for k, v in make_record(status="failed", error="boom").items()}
    write_record(tmp_path, failed)
    files = list((tmp_path / "records").iterdir())
    assert len(files) == 1
    assert read_records(tmp_path)[0]["test_mae"] == 0.6
    write_record(tmp_path, make_record(test_mae=0.7), overwrite_ok=True)
    assert read_records(tmp_path)[0]["test_mae"] == 0.7


def test_ok_replaces_failed(tmp_path):
    write_record(tmp_path, make_record(status="failed", error="boom"))
    assert read_records(tmp_path)[0]["status"] == "failed"
    write_record(tmp_path, make_record())
    assert read_records(tmp_path, status="ok")[0]["test_mae"] == 0.6
    assert read_records(tmp_path, status="failed") == []


def test_atomic_write_leaves_no_partial_file(tmp_path):
    rec = make_record()
    # serialisation fails midway: the curve is written before "predictions", a non-JSON value comes later
    rec["zz_extra"] = {"fine": [1, 2, 3], "bad": object()}
    with pytest.raises(TypeError):
        write_record(tmp_path, rec)
    assert list((tmp_path / "records").iterdir()) == []
    # NaN inside a list is refused by the writer (allow_nan=False), again without leaving a file
    rec = make_record(curve={"train_loss": [1.0, float("nan"), 0.7], "val_mae": [0.7, 0.5, 0.6]})
    with pytest.raises(ValueError):
        write_record(tmp_path, rec)
    assert list((tmp_path / "records").iterdir()) == []


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("test_mae"), "missing field 'test_mae'"),
        (lambda r: r.update(seed="3"), "field 'seed' must be int"),
        (lambda r: r.update(seed=True), "field 'seed' must be int"),
        (lambda r: r.update(status="done"), "status must be one of"),
        (lambda r: r.update(schema_version=99), "schema_version 99"),
        (lambda r: r.update(run_id="abc"), "does not match the hash"),
        (lambda r: r.update(fraction=0.0), "fraction must be in (0, 1]"),
        (lambda r: r.update(val_mae=float("nan")), "'val_mae' must be a finite"),
        (lambda r: r.update(selected_epoch=4), "selected_epoch <= epochs_run"),
        (lambda r: r.update(n_test=3), "predictions.ids has 2 entries"),
        (lambda r: r["curve"].update(val_mae=[0.1]), "curve.val_mae"),
        (lambda r: r.pop("error", None) or r.update(status="failed"), "missing field 'error'"),
    ],
)
def test_validation_errors_name_the_field(mutate, message):
    rec = make_record()
    validate_record(rec)
    mutate(rec)
    with pytest.raises(RecordError) as e:
        validate_record(rec)
    assert message in str(e.value)


def test_read_records_names_bad_file(tmp_path):
    write_record(tmp_path, make_record())
    bad = tmp_path / "records" / "broken.json"
    bad.write_text('{"schema_version": 1')
    with pytest.raises(RecordError, match="broken.json: not valid JSON"):
        read_records(tmp_path)
    bad.write_text(json.dumps(make_record()))  # valid content under the wrong file name
    with pytest.raises(RecordError, match="file name does not match"):
        read_records(tmp_path)


def test_run_id_stable_and_canonical():
    a = run_id(IDENTITY)
    assert a == run_id(copy.deepcopy(IDENTITY))
    shuffled = dict(reversed(list(IDENTITY.items())))
    assert run_id(shuffled) == a
    assert len(a) == records.RUN_ID_LENGTH
    # a known value: catches an accidental change of the canonical form (which would orphan every store)
    assert records.identity_text({"b": 1, "a": [1.5, None]}) == '{"a":[1.5,null],"b":1}'


@pytest.mark.parametrize(
    "key, value",
    [
        ("task", "dft_3d_mbj_bandgap"),
        ("task_version", "2"),
        ("encoder", "alignn"),
        ("encoder_version", "2"),
        ("encoder_options", {"hidden": 32, "layers": 2}),
        ("featurizer", "cgcnn"),
        ("table_hash", "abc"),
        ("fraction", 0.25),
        ("seed", 4),
        ("train_settings", {"optimizer": "sgd", "lr": 0.01, "epochs": 4, "batch_size": 8}),
        ("train_settings", {"optimizer": "adam", "lr": 0.01, "epochs": 3, "batch_size": 8}),
        ("limits", {"train": 40, "val": 10, "test": 11}),
        ("graph_code_version", "2"),
    ],
)
def test_run_id_sensitive_to_each_field(key, value):
    ident = copy.deepcopy(IDENTITY)
    ident[key] = value
    assert run_id(ident) != run_id(IDENTITY)


# ---- run ids of committed records; what a record says it used ---------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "leaderboard" / "quick-cpu"


def _committed_record(kind: str) -> dict:
    for p in sorted((COMMITTED / "records").glob("*.json")):
        rec = json.loads(p.read_text())
        if rec["featurizer"].partition(":")[0] == kind:
            return rec
    raise AssertionError(f"no committed record with featurizer {kind}")


# not "random": its table (hence its hash) is computed where the run runs, and the committed records' hash is
# not the one this code computes on this machine (they were made on another; float rounding is the suspect)
@pytest.mark.parametrize("kind", ["onehot", "cgcnn", "crysatom-published", "embedding"])
def test_committed_records_keep_their_run_ids(kind):
    """The code today computes the same identity (hence run id) for the committed records' runs, so a store's
    finished runs stay finished: nothing here may change what a run id covers."""
    from bench.runner import identity, parse_config, prepare

    rec = _committed_record(kind)
    features = rec["featurizer"]
    if kind == "embedding":  # recorded with the absolute path of the machine that ran it; the hash identifies it
        features = f"embedding:{COMMITTED / 'tables' / Path(features.partition(':')[2]).name}"
    # settings added since the record was written ran at the value that reproduces the code of the day
    settings = {**records.SETTINGS_ADDED_AT_DEFAULT, **rec["train_settings"]}
    settings.pop("featurizer")
    cfg = parse_config({
        "task": rec["task"], "encoder": rec["encoder"], "features": features, "fraction": rec["fraction"],
        "seed": rec["seed"], "device": "cpu", "plugins": rec["plugins"], "encoder_options": rec["encoder_options"],
        "train_options": settings,
        "train_limit": rec["limits"]["train"], "val_limit": rec["limits"]["val"], "test_limit": rec["limits"]["test"],
    })
    ident = identity(prepare(cfg), rec["dataset_key"])
    assert ident == rec["identity"]
    assert run_id(ident) == rec["run_id"]


def test_record_names_the_featurizer_the_run_used_without_changing_its_id():
    from bench.runner import run_one

    base = {"task": "dft_3d_formation_energy_peratom", "encoder": "cgcnn", "data_dir": "sample", "epochs": 1,
            "train_limit": 16, "val_limit": 4, "test_limit": 4, "device": "cpu",
            "encoder_options": {"hidden": 8, "layers": 1, "fc_hidden": 8}, "train_options": {"batch_size": 8}}
    rec = run_one(dict(base, features="random:0:16"))
    assert rec["featurizer"] == rec["train_settings"]["featurizer"] == "random:0:16"  # cgcnn.yaml says cgcnn
    assert "featurizer" not in rec["identity"]["train_settings"]
    assert run_id(rec["identity"]) == rec["run_id"]


def test_records_that_differ_only_in_featurizer_share_a_protocol():
    """The featurizer a record names in train_settings is the axis a leaderboard section compares, so it must not
    split one-hot and the tables into separate protocol sections."""
    from bench.leaderboard import protocol_of

    a = make_record(train_settings={**IDENTITY["train_settings"], "featurizer": "onehot"})
    b = make_record(train_settings={**IDENTITY["train_settings"], "featurizer": "embedding:/x/unate.json"})
    assert protocol_of(a) == protocol_of(b)

"""The supervised loop on real JARVIS structures (the bundled sample): epoch selection on validation only,
determinism, label fractions, record contents, device errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bench.records import validate_record
from bench.runner import run_one
from bench.train import Split, TrainingError, predict, seed_everything, train_supervised


TASK = "dft_3d_formation_energy_peratom"
SMALL = {"hidden": 16, "layers": 2, "fc_hidden": 16}
BASE = {
    "task": TASK,
    "encoder": "cgcnn",
    "features": "onehot",
    "data_dir": "sample",
    "epochs": 3,
    "train_limit": 40,
    "val_limit": 12,
    "test_limit": 12,
    "device": "cpu",
    "encoder_options": SMALL,
    "train_options": {"batch_size": 8, "optimizer": "adam", "scheduler": "none", "lr": 0.01},
}


@pytest.fixture(scope="module")
def splits():
    """40/12/12 real formation-energy entries of the sample with their CGCNN graphs."""
    from bench.graphs import load_graphs
    from bench.tasks import load_task

    data = load_task(TASK, "sample").limited(train=40, val=12, test=12)
    graphs = load_graphs(data.structures, "cgcnn", key=data.dataset_key, progress=False)

    def make(name):
        idx = data.splits[name]
        return Split([graphs[i] for i in idx], data.targets[idx], [data.ids[i] for i in idx])

    return make("train"), make("val"), make("test")


def small_cgcnn(seed=0):
    from bench.encoders import build_encoder
    from bench.featurizers import build_featurizer

    seed_everything(seed)
    return build_encoder("cgcnn", build_featurizer("onehot"), SMALL)


def settings(**over):
    from bench.encoders import TrainSettings

    base = dict(optimizer="adam", lr=0.01, scheduler="none", loss="mse", batch_size=8, epochs=3)
    base.update(over)
    return TrainSettings(**base)


def test_record_has_every_field_and_validates():
    rec = run_one(dict(BASE, seed=0))
    validate_record(rec)
    for key in ("run_id", "schema_version", "status", "created_at", "git_sha", "versions", "hardware", "task",
                "unit", "encoder", "encoder_version", "featurizer", "features_label", "table_hash", "fraction",
                "seed", "n_train", "n_val", "n_test", "val_mae", "test_mae", "selected_epoch", "epochs",
                "epochs_run", "predictions", "curve", "wall_time_s", "n_params", "device"):
        assert key in rec, key
    assert rec["status"] == "ok" and rec["unit"] == "eV/atom" and rec["device"] == "cpu"
    assert (rec["n_train"], rec["n_val"], rec["n_test"]) == (40, 12, 12)
    assert rec["epochs"] == rec["epochs_run"] == 3
    assert rec["versions"]["torch"] == torch.__version__.split("+")[0]
    assert rec["encoder_options"]["hidden"] == 16
    assert rec["train_settings"]["optimizer"] == "adam" and rec["train_settings"]["batch_size"] == 8
    assert len(rec["curve"]["train_loss"]) == len(rec["curve"]["val_mae"]) == 3
    # val MAE is the validation curve at the selected epoch, and that epoch is the curve's argmin
    assert rec["val_mae"] == min(rec["curve"]["val_mae"])
    assert rec["selected_epoch"] == int(np.argmin(rec["curve"]["val_mae"])) + 1
    # the test MAE is recomputable from the stored per-sample predictions
    p = rec["predictions"]
    assert rec["test_mae"] == pytest.approx(np.mean(np.abs(np.subtract(p["predictions"], p["targets"]))), rel=1e-12)
    assert rec["n_params"] > 0 and rec["table_hash"] is None  # onehot has no table


def test_test_mae_is_reported_at_the_validation_selected_epoch(splits):
    train, val, test = splits
    # Validate on the training entries themselves: the validation MAE keeps falling as the model fits (overfits)
    # 40 structures, while the test MAE does not, so the best-val epoch differs from the best-test epoch.
    val_fit = Split(train.graphs, train.targets, train.ids)
    test_curve = []

    def on_epoch(epoch, model):
        pred = predict(model, test, torch.device("cpu"), 64, float(train.targets.mean()), float(train.targets.std()))
        test_curve.append(float(np.mean(np.abs(pred - test.targets))))

    res = train_supervised(small_cgcnn(), train, val_fit, test, settings(epochs=6), seed=0, progress=False,
                           epoch_callback=on_epoch)
    best_val = int(np.argmin(res.val_curve)) + 1
    best_test = int(np.argmin(test_curve)) + 1
    assert best_val != best_test, (res.val_curve, test_curve)  # the construction did what it should
    assert res.selected_epoch == best_val
    assert res.val_mae == min(res.val_curve)
    assert res.test_mae == pytest.approx(test_curve[best_val - 1], rel=1e-9)
    assert res.test_mae > min(test_curve)  # never the best test MAE


def test_standardisation_uses_training_targets(splits):
    train, val, test = splits
    res = train_supervised(small_cgcnn(), train, val, test, settings(epochs=1), seed=0, progress=False)
    assert res.target_mean == pytest.approx(train.targets.mean())
    assert res.target_std == pytest.approx(train.targets.std())


@pytest.mark.parametrize("sched, opt, loss", [("onecycle", "adamw", "l1"), ("cosine", "sgd", "mse")])
def test_schedules_and_optimisers_run(splits, sched, opt, loss):
    train, val, test = splits
    res = train_supervised(small_cgcnn(), train, val, test, settings(scheduler=sched, optimizer=opt, loss=loss,
                           epochs=2), seed=0, progress=False)
    assert np.isfinite(res.test_mae) and len(res.lr) == 2
    if sched == "cosine":
        assert res.lr[-1] == pytest.approx(0.01 * 0.01)  # decayed to final_lr_fraction of lr
    else:
        assert res.lr[-1] < 0.01 * 0.1  # OneCycle ends far below its peak


def test_step_schedule_decays_after_each_milestone(splits):
    # CGCNN's script: MultiStepLR, the rate times gamma once the milestone epoch has run
    train, val, test = splits
    res = train_supervised(small_cgcnn(), train, val, test, settings(scheduler="step", optimizer="sgd", lr=0.01,
                           lr_milestones=(1, 3), lr_gamma=0.5, epochs=4), seed=0, progress=False)
    assert res.lr == pytest.approx([0.005, 0.005, 0.0025, 0.0025])


@pytest.mark.parametrize("over, match", [({"scheduler": "step"}, "needs lr_milestones"),
                                         ({"lr_milestones": (3, 2)}, "increasing"),
                                         ({"lr_gamma": 0.0}, "lr_gamma")])
def test_step_schedule_settings_are_checked(over, match):
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        settings(**over)


@pytest.mark.parametrize("pct_start, batch_size, epochs", [(0.01, 8, 2), (0.3, 16, 1), (0.99, 8, 2), (0.3, 64, 2)])
def test_onecycle_on_tiny_runs(splits, pct_start, batch_size, epochs):
    # CartNet's pct_start 0.01 over a handful of steps used to leave torch's warm-up phase empty
    train, val, test = splits
    res = train_supervised(small_cgcnn(), train, val, test, settings(scheduler="onecycle", pct_start=pct_start,
                           batch_size=batch_size, epochs=epochs), seed=0, progress=False)
    assert np.isfinite(res.test_mae)


def test_diverging_loss_is_a_named_error(splits):
    train, val, test = splits
    with pytest.raises(TrainingError, match="training loss became"):
        train_supervised(small_cgcnn(), train, val, test, settings(lr=1e30, optimizer="sgd", epochs=3), seed=0,
                         progress=False)


@pytest.mark.parametrize("features", ["onehot", "learned"])  # learned: a randomly initialised table
def test_deterministic_for_a_seed_and_different_across_seeds(features):
    a = run_one(dict(BASE, seed=0, features=features))
    torch.rand(7)  # whatever ran in between must not matter
    b = run_one(dict(BASE, seed=0, features=features))
    c = run_one(dict(BASE, seed=1, features=features))
    assert a["run_id"] == b["run_id"] != c["run_id"]
    assert a["val_mae"] == b["val_mae"] and a["test_mae"] == b["test_mae"]
    assert a["predictions"] == b["predictions"]
    assert a["curve"]["train_loss"] == b["curve"]["train_loss"]
    assert a["test_mae"] != c["test_mae"]
    assert a["predictions"]["predictions"] != c["predictions"]["predictions"]


def test_label_fraction_shrinks_train_only():
    full = run_one(dict(BASE, seed=0, epochs=1))
    half = run_one(dict(BASE, seed=0, epochs=1, fraction=0.5))
    other_seed = run_one(dict(BASE, seed=3, epochs=1, fraction=0.5))
    assert full["n_train"] == 40 and half["n_train"] == 20 == other_seed["n_train"]
    assert full["n_val"] == half["n_val"] == other_seed["n_val"] == 12
    # val/test are fixed across fractions and seeds (limits draw val/test independently of the seed)
    assert full["predictions"]["ids"] == half["predictions"]["ids"] == other_seed["predictions"]["ids"]
    assert full["predictions"]["targets"] == half["predictions"]["targets"]


def test_cuda_without_gpu_is_a_clear_error():
    from bench.devices import DeviceError, resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceError, match="no CUDA GPU is available"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        run_one(dict(BASE, seed=0, device="cuda:1"))


def test_hardware_description():
    from bench.devices import describe_hardware

    hw = describe_hardware()
    assert hw["cpu"] and hw["cpu_count"] >= 1 and hw["torch_threads"] >= 1


def test_train_settings_dataclass_is_frozen():
    # train.py reads settings by attribute; a TrainSettings change of field names must show up here
    names = {f.name for f in dataclasses.fields(settings())}
    assert {"optimizer", "lr", "weight_decay", "momentum", "scheduler", "pct_start", "final_lr_fraction", "loss",
            "batch_size", "epochs"} <= names


def test_progress_bar_shows_loss_and_val_mae(splits, capsys):
    train, val, test = splits
    train_supervised(small_cgcnn(), train, val, test, settings(epochs=2), seed=0, progress=True, desc="cgcnn-test")
    err = capsys.readouterr().err
    assert "cgcnn-test" in err and "val_mae=" in err and "loss=" in err


def test_both_message_passing_implementations_train_to_the_same_numbers(splits):
    """message_passing=torch (the GPU / no-DGL path) trains as DGL's kernels do, to float rounding; the record
    side says which ran."""
    from bench import graphops

    train, val, test = splits
    impls = ["torch"] + (["dgl"] if graphops.dgl_available() else [])
    res = {m: train_supervised(small_cgcnn(), train, val, test, settings(epochs=2, message_passing=m), seed=0,
                               progress=False) for m in impls}
    assert res["torch"].extra["message_passing"] == "torch"
    if "dgl" in res:
        assert res["dgl"].extra["message_passing"] == "dgl"
        np.testing.assert_allclose(res["torch"].train_loss, res["dgl"].train_loss, rtol=1e-4)
        np.testing.assert_allclose(res["torch"].val_curve, res["dgl"].val_curve, rtol=1e-4)


def test_bf16_precision_trains_and_is_recorded_and_identified(tmp_path):
    fp = run_one(dict(BASE, epochs=2))
    bf = run_one(dict(BASE, epochs=2, train_options={**BASE["train_options"], "precision": "bf16"}))
    validate_record(bf)
    assert fp["precision"] == "fp32" and bf["precision"] == "bf16"
    assert bf["train_settings"]["precision"] == "bf16" and np.isfinite(bf["val_mae"])
    assert bf["run_id"] != fp["run_id"]  # it changes the numbers: part of the identity
    assert "precision" not in fp["identity"]["train_settings"]  # at fp32, as records made before it existed
    assert bf["identity"]["train_settings"]["precision"] == "bf16"
    # message_passing is how the same function is evaluated: recorded, never part of the identity
    forced = run_one(dict(BASE, epochs=2, train_options={**BASE["train_options"], "message_passing": "torch"}))
    assert forced["message_passing"] == "torch" and forced["train_settings"]["message_passing"] == "torch"
    assert forced["run_id"] == fp["run_id"]
    assert abs(forced["val_mae"] - fp["val_mae"]) < 1e-4 * max(1.0, fp["val_mae"])

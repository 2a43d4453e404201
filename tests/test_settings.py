"""Training settings: later-added settings at their neutral default stay out of a run's identity (so earlier
records keep their run ids), and suites override settings by name, checked before anything runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench.records import SETTINGS_ADDED_AT_DEFAULT, identity_settings, run_id
from bench.settings import TrainSettings

RECORDS = Path(__file__).resolve().parents[1] / "leaderboard" / "quick-cpu" / "records"


def committed_record() -> dict:
    return json.loads(sorted(RECORDS.glob("*.json"))[0].read_text())


def test_every_added_setting_is_a_training_setting_with_that_default():
    fields = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
    for key, neutral in SETTINGS_ADDED_AT_DEFAULT.items():
        assert key in fields, key
        assert list(fields[key]) == neutral if isinstance(neutral, list) else fields[key] == neutral


def test_a_committed_record_keeps_its_run_id_with_the_added_settings_at_default():
    rec = committed_record()
    ident = rec["identity"]
    assert not set(SETTINGS_ADDED_AT_DEFAULT) & set(ident["train_settings"])  # made before they existed
    today = {**rec["train_settings"], **SETTINGS_ADDED_AT_DEFAULT}
    rebuilt = {k: v for k, v in identity_settings(today).items() if k != "featurizer"}
    assert rebuilt == ident["train_settings"]
    assert run_id({**ident, "train_settings": rebuilt}) == rec["run_id"]


def test_an_added_setting_away_from_its_default_is_part_of_the_identity():
    out = identity_settings({"lr": 0.01, "lr_milestones": [100], "lr_gamma": 0.1, "symmetry_reduce": False})
    assert out == {"lr": 0.01, "lr_milestones": [100]}


def test_suite_train_options_reach_every_trial_and_typos_are_named(tmp_path):
    from bench.sweep import SweepError, SweepPlan, Suite, check_suite, trial_configs

    suite = Suite(tasks=("dft_3d_formation_energy_peratom",), fractions=(1.0,), seeds=(0,),
                  train_options=("optimizer=adamw", "lr=0.001"), batch_size=64, name="t")
    check_suite(suite)
    plan = SweepPlan(suite=suite, encoders=("cgcnn",), objectives=(), controls=False, store=tmp_path)
    cfgs = trial_configs(plan, {})
    assert cfgs and all(c["train_options"] == {"optimizer": "adamw", "lr": "0.001", "batch_size": 64} for c in cfgs)
    with pytest.raises(SweepError, match="Did you mean 'optimizer'"):
        check_suite(dataclasses.replace(suite, train_options=("optimiser=sgd",)))
    with pytest.raises(SweepError, match="suite's own 'epochs' key"):
        check_suite(dataclasses.replace(suite, train_options=("epochs=3",)))


def test_records_before_and_after_an_added_setting_share_a_protocol():
    from bench.leaderboard import protocol_of

    old = committed_record()
    new = {**old, "train_settings": {**old["train_settings"], **SETTINGS_ADDED_AT_DEFAULT}}
    assert protocol_of(new) == protocol_of(old)
    changed = {**old, "train_settings": {**new["train_settings"], "lr_milestones": [5]}}
    assert protocol_of(changed) != protocol_of(old)


def test_the_grid_runs_seed_by_seed(tmp_path):
    # a sweep stopped part-way must leave whole tables (every featurizer, both tasks) for its first seeds
    from bench.sweep import SweepPlan, Suite, trial_configs

    suite = Suite(tasks=("dft_3d_formation_energy_peratom", "dft_3d_mbj_bandgap"), fractions=(0.1, 1.0),
                  seeds=(0, 1), featurizers=("onehot", "cgcnn"), name="t")
    cfgs = trial_configs(SweepPlan(suite=suite, encoders=("cgcnn",), objectives=(), controls=False,
                                   store=tmp_path), {})
    first = cfgs[: len(cfgs) // 2]
    assert {c["seed"] for c in first} == {0}
    assert {(c["task"], c["fraction"], c["features"]) for c in first} == {
        (t, f, x) for t in suite.tasks for f in suite.fractions for x in suite.featurizers}


def test_message_passing_is_evaluation_only_and_precision_joins_the_identity_away_from_fp32():
    from bench.records import EVALUATION_ONLY_SETTINGS

    assert "message_passing" in EVALUATION_ONLY_SETTINGS and SETTINGS_ADDED_AT_DEFAULT["precision"] == "fp32"
    assert identity_settings({"lr": 0.01, "message_passing": "torch", "precision": "fp32"}) == {"lr": 0.01}
    assert identity_settings({"lr": 0.01, "message_passing": "dgl", "precision": "bf16"}) == {
        "lr": 0.01, "precision": "bf16"}
    with pytest.raises(Exception, match="Did you mean 'torch'"):
        TrainSettings(message_passing="troch")
    with pytest.raises(Exception, match="precision"):
        TrainSettings(precision="fp16")

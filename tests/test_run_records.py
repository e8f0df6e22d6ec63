"""A run's record says what happened (issue 23): a blown-up run is an error, never NaN
results; a resume changes no training setting silently and records what it changes; a
rerun never relabels, overwrites or loses a finished run's record; one run per workdir;
every file we write is strict JSON; the logged training accuracy uses one map."""

import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import flagfile_config

from nri_modular import checkpoints, evaluate, evaluate_saved, train, writers
from nri_modular.config import Config
from nri_modular.modules import ModuleBank


def _copy_run(trained_workdir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)
    return workdir


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ----------------------------------------------------------------------------------------
# Non-finite numbers never reach a results file.


def test_a_blown_up_run_is_an_error_and_writes_no_results(tmp_path, tiny_data_dir):
    """The probe's case: --learning_rate=0.3 --horizon=40 on test.flags (the loss stays
    finite while the gradient norm overflows)."""
    workdir = str(tmp_path / "run")
    config = flagfile_config(data_dir=tiny_data_dir, learning_rate=0.3, horizon=40)
    with pytest.raises((train.DivergenceError, evaluate.NonFiniteResultError)) as err:
        train.train_and_evaluate(config, workdir)
    assert "no results written" in str(err.value)
    assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_a_non_finite_prediction_names_its_task_and_step():
    bank = ModuleBank(2, (8,), (8,))
    params = bank.init(jax.random.PRNGKey(0))
    states = np.zeros((6, 12, 3, 4), np.float32)
    states[4, 7] = 3e38  # a finite outlier: its squared error overflows float32
    structures = np.zeros((6, 6), np.int32)
    with pytest.raises(evaluate.NonFiniteResultError, match="prediction of test task 4"):
        evaluate.prediction_mse(
            bank, params, states, structures, start_frame=5, horizon=4, batch_size=4
        )
    ok = evaluate.prediction_mse(
        bank, params, states[:4], structures[:4], start_frame=5, horizon=4, batch_size=4
    )
    assert np.isfinite(ok.normalised).all() and ok.physical is None


def test_check_finite_results_names_every_bad_entry():
    with pytest.raises(evaluate.NonFiniteResultError, match=r"\['mse_1', 'mse_per_step'\]"):
        evaluate.check_finite_results(
            {
                "edge_accuracy": 0.9,
                "mse_1": float("nan"),
                "mse_per_step": [1.0, float("inf")],
                "mse_20": None,
                "system": "springs",
            },
            "results.json",
        )
    evaluate.check_finite_results({"edge_accuracy": 0.9, "mse_20": None}, "results.json")


def test_metrics_and_json_files_are_strict_json(tmp_path):
    with writers.MetricWriter(str(tmp_path)) as writer:
        writer.write(
            {"step": 1, "loss": 0.5, "accept_rate": float("nan"), "proposal_loss": float("inf")}
        )
    line = _read(tmp_path / writers.METRICS_FILE).strip()

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    assert json.loads(line, parse_constant=refuse) == {
        "step": 1,
        "loss": 0.5,
        "accept_rate": None,
        "proposal_loss": None,
    }
    with pytest.raises(ValueError, match="Out of range float"):
        checkpoints.write_json_atomic(str(tmp_path / "r.json"), {"a": float("nan")})
    assert not os.path.exists(tmp_path / "r.json")


def test_non_finite_flag_values_are_refused():
    with pytest.raises(ValueError, match="learning_rate must be finite, got inf"):
        Config(learning_rate=float("inf"))


# ----------------------------------------------------------------------------------------
# The logged training accuracy: one module -> relation map over all training tasks.


def test_logged_training_accuracy_is_that_of_all_training_structures(trained_workdir):
    """At step 8 the run both logs and checkpoints: the logged accuracy is the checkpoint's
    (one map chosen on all 40 training tasks), not a mean of per-batch maps."""
    records = writers.read_metrics(trained_workdir)
    meta = checkpoints.read_run_meta(trained_workdir)
    last = records[-1]
    assert last["step"] == 8 and "edge_accuracy" not in last
    assert last["train_edge_accuracy"] == meta["module_to_relation"]["8"]["train_edge_accuracy"]


# ----------------------------------------------------------------------------------------
# Resume: every training setting refused, every change recorded.


@pytest.mark.parametrize(
    "override",
    [
        dict(p=5),
        dict(sa_steps=1),
        dict(exact_stride=2),
        dict(uniform_mix=0.3),
        dict(initial_temperature=1e-3),
        dict(temperature_decay_steps=100.0),
        dict(proposal_learning_rate=1e-2),
        dict(refresh_energy=False),
        dict(module_init_spread=0.1),
    ],
    ids=lambda o: next(iter(o)),
)
def test_resume_refuses_every_training_setting(trained_workdir, tmp_path, tiny_data_dir, override):
    workdir = _copy_run(trained_workdir, tmp_path)
    before = _read(os.path.join(workdir, "config.json"))
    name = next(iter(override))
    with pytest.raises(ValueError, match=f"{name} \\(checkpoint "):
        train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir, **override), workdir)
    assert _read(os.path.join(workdir, "config.json")) == before  # the record is untouched


def test_every_config_field_is_classified():
    """A field added to Config is refused on resume until it is classified."""
    names = {f for f in Config.__dataclass_fields__}
    refused = set(checkpoints.training_fields())
    allowed = set(
        checkpoints.RESUMABLE_FIELDS + checkpoints.META_TEST_FIELDS + checkpoints.SCHEDULE_FIELDS
    )
    assert refused | allowed == names and not refused & allowed
    assert {"p", "sa_steps", "seed", "loss", "uniform_mix", "proposal_learning_rate"} <= refused


def test_an_extended_run_records_its_segments_and_keeps_its_earlier_results(
    trained_workdir, tmp_path, tiny_data_dir
):
    workdir = _copy_run(trained_workdir, tmp_path)
    first = json.loads(_read(os.path.join(workdir, "results.json")))
    results = train.train_and_evaluate(
        flagfile_config(data_dir=tiny_data_dir, num_epochs=3, test_sa_steps=5), workdir
    )
    assert results["train_steps"] == 12
    assert json.loads(_read(os.path.join(workdir, "results_step8.json"))) == first
    segments = checkpoints.read_run_meta(workdir)["segments"]
    assert segments[0] == {"start_step": 0, "changed": {}}
    assert segments[-1] == {
        "start_step": 8,
        "changed": {"num_epochs": [2, 3], "test_sa_steps": [4, 5]},
    }


# ----------------------------------------------------------------------------------------
# Rerunning a finished run.


def test_a_rerun_of_a_finished_run_returns_its_results_and_writes_nothing(
    trained_workdir, tmp_path, tiny_data_dir
):
    workdir = _copy_run(trained_workdir, tmp_path)
    path = os.path.join(workdir, "results.json")
    before, mtime = _read(path), os.path.getmtime(path)
    results = train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir), workdir)
    assert results == json.loads(before)
    assert _read(path) == before and os.path.getmtime(path) == mtime


def test_a_finished_run_with_other_test_flags_points_to_evaluate(
    trained_workdir, tmp_path, tiny_data_dir
):
    workdir = _copy_run(trained_workdir, tmp_path)
    before = _read(os.path.join(workdir, "results.json"))
    with pytest.raises(ValueError, match="test_sa_steps=4 .*now test_sa_steps=9.*evaluate.py"):
        train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir, test_sa_steps=9), workdir)
    assert _read(os.path.join(workdir, "results.json")) == before


def test_a_shorter_rerun_is_refused_and_keeps_every_checkpoint(
    trained_workdir, tmp_path, tiny_data_dir
):
    workdir = _copy_run(trained_workdir, tmp_path)
    os.remove(os.path.join(workdir, "results.json"))
    before = checkpoints.checkpoint_steps(workdir)
    config_before = _read(os.path.join(workdir, "config.json"))
    with pytest.raises(ValueError, match="checkpoint at step 8, beyond this run's 4 steps"):
        train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir, num_epochs=1), workdir)
    assert checkpoints.checkpoint_steps(workdir) == before == [4, 8]
    assert _read(os.path.join(workdir, "config.json")) == config_before


def test_a_failed_start_does_not_block_the_corrected_rerun(tmp_path, tiny_data_dir):
    """A run that failed before its first checkpoint left config.json and metrics lines:
    the corrected rerun starts afresh (no refusal naming a checkpoint that does not exist)."""
    workdir = str(tmp_path / "run")
    checkpoints.prepare_workdir(workdir, flagfile_config(data_dir=tiny_data_dir, p=7))
    with open(os.path.join(workdir, writers.METRICS_FILE), "w", encoding="utf-8") as f:
        f.write(json.dumps({"step": 2, "loss": 1.0}) + "\n")
    train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir), workdir)
    steps = [r["step"] for r in writers.read_metrics(workdir)]
    assert steps == [2, 4, 6, 8] and writers.read_metrics(workdir)[0]["loss"] != 1.0


# ----------------------------------------------------------------------------------------
# One run per workdir.


def test_a_second_run_on_a_busy_workdir_fails_at_once(tmp_path, tiny_data_dir):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(workdir / '.lock')!r}, 'a+')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "f.write('pid 4242 on elsewhere'); f.flush()\n"
            "print('locked', flush=True); time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.time()
        with pytest.raises(RuntimeError, match="is in use by pid 4242 on elsewhere"):
            train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir), str(workdir))
        assert time.time() - start < 5 and sorted(os.listdir(workdir)) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (killed): its lock went with it.
    with checkpoints.WorkdirLock(str(workdir)):
        with checkpoints.WorkdirLock(str(workdir)):  # re-entrant in one process
            pass


# ----------------------------------------------------------------------------------------
# Evaluation outputs.


def test_evaluations_of_two_folders_of_one_name_do_not_overwrite_each_other(tmp_path):
    a = evaluate_saved.default_out("run", str(tmp_path / "x" / "data"), "test", 8)
    b = evaluate_saved.default_out("run", str(tmp_path / "y" / "data"), "test", 8)
    assert a != b and os.path.basename(a).startswith("test_data-")


def test_evaluation_writes_its_json_and_structures_before_the_figure(
    trained_workdir, tmp_path, tiny_data_dir, monkeypatch
):
    from nri_modular import plots

    def broken_figure(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(plots, "evaluation_figure", broken_figure)
    workdir = _copy_run(trained_workdir, tmp_path)
    out = str(tmp_path / "eval.json")
    with pytest.raises(RuntimeError, match="figure failed"):
        evaluate_saved.evaluate_run(workdir, tiny_data_dir, out=out, num_plots=1)
    saved = json.loads(_read(out))
    inferred = np.load(saved["inferred"])
    expected = json.loads(_read(os.path.join(workdir, "results.json")))
    assert saved["edge_accuracy"] == expected["edge_accuracy"]
    relations = inferred["module_to_relation"][inferred["structures"]]
    assert np.array_equal(relations, inferred["relations"])
    assert np.mean(inferred["relations"] == inferred["labels"]) == pytest.approx(
        saved["edge_accuracy"]
    )

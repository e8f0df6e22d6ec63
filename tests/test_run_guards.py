"""Guards of a run: settings that cannot work fail when the config is built; a resumed
run refuses other data, normalisation or data order; divergence stops training."""

import os
import re
import shutil

import pytest
from conftest import flagfile_config

from nri_modular import checkpoints, train
from nri_modular.data import datasets, files


@pytest.mark.parametrize(
    "override, message",
    [
        (
            dict(num_particles=18, proposal="exact_sweep", test_proposal="uniform"),
            "proposal=exact_sweep enumerates K^(n-1) = 2^17 = 131072 settings",
        ),
        (
            dict(num_modules=3, num_particles=12, proposal="uniform"),
            "test_proposal=exact_local enumerates K^(n-1) = 3^11 = 177147 settings",
        ),
    ],
    ids=["exact_sweep_18_particles", "exact_local_test_3_modules"],
)
def test_infeasible_exact_moves_fail_when_the_config_is_built(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        flagfile_config(**override)
    # The largest feasible size builds (2^16 = 65536 settings).
    flagfile_config(num_particles=17, proposal="exact_sweep")


# ----------------------------------------------------------------------------------------
# A resumed run refuses what would change its data, normalisation or data order.


def _copy_run(trained_workdir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)
    return workdir


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(seed=5), "seed (checkpoint 0, now 5)"),
        (dict(batch_size=20), "batch_size (checkpoint 10, now 20)"),
        (dict(data_seed=7), "data_seed (checkpoint 42, now 7)"),
        (
            dict(test_proposal="blocked_gibbs"),
            "proposal network (blocked_gibbs in proposal or test_proposal) (checkpoint False, "
            "now True)",
        ),
    ],
    ids=["seed", "batch_size", "data_seed", "proposal_network"],
)
def test_resume_refuses_other_data_order_or_data(
    trained_workdir, tmp_path, tiny_data_dir, override, message
):
    workdir = _copy_run(trained_workdir, tmp_path)
    before = sorted(os.listdir(tiny_data_dir))
    with pytest.raises(ValueError, match=re.escape(message)):
        train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir, **override), workdir)
    assert sorted(os.listdir(tiny_data_dir)) == before  # data_seed: nothing regenerated


def test_resume_refuses_another_loss_naming_the_field(trained_workdir, tmp_path, tiny_data_dir):
    workdir = _copy_run(trained_workdir, tmp_path)
    with pytest.raises(ValueError, match=re.escape("loss (checkpoint 'mse', now 'huber')")):
        train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir, loss="huber"), workdir)


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(huber_delta=0.5), "huber_delta (checkpoint 0.01, now 0.5)"),
        (dict(final_learning_rate=1e-4), "final_learning_rate (checkpoint 0.0, now 0.0001)"),
        # A decaying step size: the schedule's length and start are fixed too.
        (dict(final_learning_rate=1e-4, num_epochs=3), "num_epochs (checkpoint 2, now 3)"),
    ],
    ids=["huber_delta", "final_learning_rate", "num_epochs_when_decaying"],
)
def test_resume_refuses_another_objective_or_schedule(
    trained_workdir, tmp_path, tiny_data_dir, override, message
):
    workdir = _copy_run(trained_workdir, tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        checkpoints.prepare_workdir(workdir, flagfile_config(data_dir=tiny_data_dir, **override))
    # A constant step size: the run may be extended or its step size changed.
    config = flagfile_config(data_dir=tiny_data_dir, num_epochs=3, learning_rate=5e-4)
    checkpoints.prepare_workdir(workdir, config)


def test_meta_test_settings_do_not_block_a_resume(trained_workdir, tmp_path, tiny_data_dir):
    """test_proposal (same network presence), test search sizes and horizon are meta-test
    settings: today's test_proposal=exact_local -> uniform no longer refuses."""
    workdir = _copy_run(trained_workdir, tmp_path)
    config = flagfile_config(
        data_dir=tiny_data_dir, test_proposal="uniform", test_sa_steps=9, horizon=3
    )
    checkpoints.prepare_workdir(workdir, config)  # raises on a refused change


def test_resume_refuses_other_training_data_but_not_a_moved_folder(
    trained_workdir, tmp_path, tiny_data_dir
):
    workdir = _copy_run(trained_workdir, tmp_path)
    moved = str(tmp_path / "moved_data")
    shutil.copytree(tiny_data_dir, moved)
    saved = checkpoints.read_run_meta(workdir)["train_data"]
    assert files.fingerprint(moved, "springs", 4) == saved  # another path, same data
    other = str(tmp_path / "other_data")
    datasets.generate_dataset(
        "springs", other, num_train=40, num_valid=4, num_test=8, seed=43, num_particles=4
    )
    os.remove(os.path.join(other, "meta_springs4.json"))  # read as it is, never regenerated
    with pytest.raises(ValueError) as err:
        train.train_and_evaluate(flagfile_config(data_dir=other, data_seed=42), workdir)
    message = str(err.value)
    assert f"workdir {workdir!r} was trained on other data" in message
    assert "loc_train_springs4.npy': [40, 49, 2, 4]" in message and "sample hash" in message


# ----------------------------------------------------------------------------------------
# Divergence stops the run.


def test_divergence_stops_the_run_at_its_step(trained_workdir, tmp_path, tiny_data_dir):
    """A finished 8-step run resumed to 16 steps with an absurd learning rate: the error
    names the step, checkpoint 8 stays the latest, no results file is written."""
    workdir = _copy_run(trained_workdir, tmp_path)
    os.remove(os.path.join(workdir, "results.json"))
    config = flagfile_config(data_dir=tiny_data_dir, num_epochs=4, learning_rate=1e30)
    with pytest.raises(train.DivergenceError) as err:
        train.train_and_evaluate(config, workdir)
    match = re.search(
        r"training diverged at step (\d+): loss (\S+), gradient norm (\S+);", str(err.value)
    )
    assert match and 8 < int(match.group(1)) <= 16
    assert "nan" in match.group(2, 3) or "inf" in match.group(2, 3)
    assert "the latest checkpoint (step 8) is the last good state" in str(err.value)
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert steps[-1] == 8
    assert not os.path.exists(os.path.join(workdir, "results.json"))


# ----------------------------------------------------------------------------------------
# Hidden particle: choices on valid systems, existence test apart from the MSE systems.


def test_existence_test_systems_never_overlap_the_mse_systems():
    from nri_modular import hidden_node_experiment as experiment

    with pytest.raises(ValueError, match="num_systems 200 \\+ num_existence 100 exceed the 250"):
        experiment.ExperimentConfig(num_test=250, num_systems=200, num_existence=100)
    with pytest.raises(ValueError, match="exceed the 100 valid systems \\(num_valid\\)"):
        experiment.ExperimentConfig(split="valid", num_valid=100, num_systems=50)
    experiment.ExperimentConfig(split="valid", num_valid=100, num_systems=50, num_existence=50)
    with pytest.raises(ValueError, match="split must be 'test' or 'valid'"):
        experiment.ExperimentConfig(split="train")

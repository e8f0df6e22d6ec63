"""Hostile inputs: a catalogue of bad CLI arguments, flags, data files, workdirs,
checkpoints and API calls. Each must fail with an error naming the problem, and none may
touch an existing checkpoint.

Cases needing a trained workdir work on copies of the session's smoke run
(``trained_workdir``: checkpoints at steps 4 and 8); the data cases on copies of its
dataset. Nothing here compiles a training step: every failure happens before.
"""

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import optax
import pytest
from absl import flags as absl_flags
from absl.testing import parameterized
from conftest import REPO, cli, flagfile_config

from nri_modular import bouncegrad, checkpoints, distributed, evaluate, metrics, structure, train
from nri_modular import config as config_lib
from nri_modular.data import batching, datasets
from nri_modular.modules import ModuleBank

# ----------------------------------------------------------------------------------------
# Flags (parsed in-process exactly as the experiment scripts parse them).


class _FlagsShim:
    """``define_flags`` registers into this private FlagValues instead of absl's global."""

    def __init__(self, flag_values):
        self._fv = flag_values

    def __getattr__(self, name):
        return functools.partial(getattr(absl_flags, name), flag_values=self._fv)


def _parse(*args):
    fv = absl_flags.FlagValues()
    config_lib.define_flags(_FlagsShim(fv))
    fv(["springs.py", f"--flagfile={os.path.join(REPO, 'experiments/flags/test.flags')}", *args])
    return config_lib.config_from_flags(fv)


FLAG_CASES = [
    ("unknown_proposal", ["--proposal=magic"], "proposal"),
    ("unknown_test_proposal", ["--test_proposal=magic"], "test_proposal"),
    ("unknown_edge_compute", ["--edge_compute=gpu"], "edge_compute"),
    ("negative_epochs", ["--num_epochs=-3"], "num_epochs must be positive, got -3"),
    ("zero_batch", ["--batch_size=0"], "batch_size must be positive, got 0"),
    ("negative_sa_steps", ["--sa_steps=-1"], "sa_steps must be >= 0, got -1"),
    ("negative_horizon", ["--horizon=-1"], "horizon must be >= 0 (0: structures only), got -1"),
    ("bad_layer_sizes", ["--edge_hidden=16,abc"], "layer sizes must be comma-separated"),
    ("mix_out_of_range", ["--uniform_mix=1.5"], "uniform_mix must be in [0, 1], got 1.5"),
    ("one_particle", ["--num_particles=1"], "num_particles must be >= 2, got 1"),
    ("batch_exceeds_tasks", ["--batch_size=50"], "batch_size 50 exceeds num_train 40"),
    ("non_integer_flag", ["--num_epochs=abc"], "num_epochs"),
    ("misspelt_flag", ["--num_epoch=3"], "num_epoch"),
    ("zero_model_axis", ["--model_axis_size=0"], "model_axis_size must be positive"),
    ("processes_without_coordinator", ["--num_processes=2"], "need --coordinator_address"),
    (
        "coordinator_not_host_port",
        ["--coordinator_address=nohost", "--num_processes=2", "--process_id=0"],
        "coordinator_address must be host:port",
    ),
    (
        "process_id_out_of_range",
        ["--coordinator_address=localhost:1234", "--num_processes=2", "--process_id=5"],
        "--process_id must be in [0, 2)",
    ),
    ("negative_temperature", ["--initial_temperature=-1"], "initial_temperature must be"),
    ("zero_task_shards", ["--task_shards=0"], "task_shards must be positive, got 0"),
    (
        "task_shards_not_dividing_batch",
        ["--task_shards=4"],
        "batch_size=10 is not divisible by task_shards=4",
    ),
]


class FlagTest(parameterized.TestCase):
    def test_ci_flagfile_parses(self):
        self.assertEqual(_parse().num_train, 40)

    @parameterized.named_parameters(*FLAG_CASES)
    def test_bad_flag(self, args, message):
        with self.assertRaises((ValueError, absl_flags.Error)) as ctx:
            _parse(*args)
        self.assertIn(message, str(ctx.exception))


# ----------------------------------------------------------------------------------------
# The real CLI (a subprocess each; they fail before compiling anything).


@pytest.mark.parametrize(
    "extra, env_extra, message",
    [
        (["--system=pendulum"], {}, "system"),
        (["--workdir=/nonexistent_parent_dir/x/run"], {}, "parent directory of workdir"),
        (
            [],
            {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
            "batch_size=10 is not divisible by the 4 devices of the data axis",
        ),
        (["positional_argument"], {}, "unexpected arguments"),
    ],
    ids=["unknown_system", "missing_workdir_parent", "batch_vs_4_devices", "stray_argument"],
)
def test_cli_rejects(tmp_path, tiny_data_dir, subprocess_env, extra, env_extra, message):
    args = cli(str(tmp_path / "run"), tiny_data_dir, *extra)
    proc = subprocess.run(
        args, env=dict(subprocess_env, **env_extra), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


# ----------------------------------------------------------------------------------------
# Workdirs and checkpoints.


def _snapshot(workdir):
    """``{relative path: sha1}`` of every file under ``workdir/checkpoints``."""
    root = os.path.join(workdir, "checkpoints")
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return out


@pytest.fixture
def run_copy(tmp_path, trained_workdir):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)
    return workdir


def _data_files(workdir, step):
    root = os.path.join(workdir, "checkpoints", str(step))
    return sorted(
        os.path.join(d, f)
        for d, _, files in os.walk(root)
        for f in files
        if os.path.getsize(os.path.join(d, f)) > 0
    )


def _garble(path):
    with open(path, "r+b") as f:
        size = os.path.getsize(path)
        f.write(b"\x00garbage" * (size // 8 + 1))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _remove(path):
    os.remove(path)


# Orbax leaves an un-awaited read coroutine behind when a restore fails: not our warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", [_garble, _truncate, _remove], ids=lambda f: f.__name__[1:])
def test_damaged_latest_checkpoint_is_named_and_kept(run_copy, tiny_data_dir, damage):
    os.remove(os.path.join(run_copy, "results.json"))  # killed in meta-test: it resumes
    for path in _data_files(run_copy, 8):
        damage(path)
    before = _snapshot(run_copy)
    config = flagfile_config(data_dir=tiny_data_dir)
    with pytest.raises(checkpoints.CheckpointError) as err:
        train.train_and_evaluate(config, run_copy)
    message = str(err.value)
    latest = os.path.join(os.path.abspath(run_copy), "checkpoints", "8")
    assert f"checkpoint {latest} (step 8) is damaged" in message
    assert "intact earlier steps: [4]" in message and f"mv {latest} {latest}.damaged" in message
    assert _snapshot(run_copy) == before
    # The documented fix: the damaged step moved aside, the manager resumes from step 4.
    os.rename(latest, latest + ".damaged")
    assert checkpoints.checkpoint_manager(run_copy, config.keep_checkpoints).latest_step() == 4


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(num_particles=5), r"num_particles \(checkpoint 4, now 5\)"),
        # Another data order would silently not resume exactly.
        (dict(task_shards=2), r"task_shards \(checkpoint 1, now 2\)"),
    ],
    ids=["particle_count", "task_shards"],
)
def test_other_run_settings_than_checkpoint(run_copy, tiny_data_dir, override, message):
    before = _snapshot(run_copy)
    config = flagfile_config(data_dir=tiny_data_dir, **override)
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(config, run_copy)
    assert _snapshot(run_copy) == before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_other_shapes_than_checkpoint_without_config_json(run_copy, tiny_data_dir):
    os.remove(os.path.join(run_copy, "config.json"))
    before = _snapshot(run_copy)
    config = flagfile_config(data_dir=tiny_data_dir, num_modules=3)
    with pytest.raises(checkpoints.CheckpointError, match="holds arrays of other shapes"):
        train.train_and_evaluate(config, run_copy)
    assert _snapshot(run_copy) == before


# A failed Orbax restore of an earlier test on this worker may be garbage-collected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupted_config_json(run_copy, tiny_data_dir):
    with open(os.path.join(run_copy, "config.json"), "w", encoding="utf-8") as f:
        f.write('{"system": "spr')
    before = _snapshot(run_copy)
    with pytest.raises(ValueError, match=r"config.json is unreadable \(JSONDecodeError"):
        train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir), run_copy)
    assert _snapshot(run_copy) == before


def test_workdir_parent_missing(tmp_path, tiny_data_dir):
    workdir = str(tmp_path / "missing" / "run")
    with pytest.raises(FileNotFoundError, match="parent directory of workdir"):
        train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir), workdir)


@pytest.mark.parametrize("target", ["loop", "nowhere"])
def test_data_dir_symlink_to_nothing(tmp_path, target):
    link = tmp_path / "data"
    link.symlink_to(tmp_path / ("data" if target == "loop" else "nowhere"))
    with pytest.raises(NotADirectoryError, match="is a symlink to nothing"):
        train.train_and_evaluate(flagfile_config(data_dir=str(link)), str(tmp_path / "run"))
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()  # nothing created


def test_workdir_is_a_file(tmp_path, tiny_data_dir):
    path = tmp_path / "run"
    path.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir), str(path))


def test_horizon_longer_than_test_trajectories(tmp_path, tiny_data_dir):
    config = flagfile_config(data_dir=tiny_data_dir, horizon=60)
    with pytest.raises(
        ValueError, match="test trajectories have 99 frames; obs_frames=49 and horizon=60 need 110"
    ):
        train.train_and_evaluate(config, str(tmp_path / "run"))


# ----------------------------------------------------------------------------------------
# Data files.


@pytest.fixture
def data_copy(tmp_path, tiny_data_dir):
    data_dir = str(tmp_path / "data")
    shutil.copytree(tiny_data_dir, data_dir)
    return data_dir


def _loc_train(data_dir):
    return os.path.join(data_dir, datasets.file_name("loc", "train", "springs", 4))


def _nan_states(path):
    loc = np.load(path)
    loc[3, 7, 0, 1] = np.nan
    np.save(path, loc)
    return "non-finite values (NaN/inf), first at index (3, 7, 0, 1)"


def _inf_states(path):
    loc = np.load(path)
    loc[0, 0, 1, 0] = np.inf
    np.save(path, loc)
    return "non-finite values (NaN/inf)"


def _wrong_shape(path):
    np.save(path, np.load(path)[:, :, 0])
    return "expected shape [sims, frames, 2, n]"


def _truncated_file(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)
    return f"{path}: cannot be read"


@pytest.mark.parametrize(
    "damage", [_nan_states, _inf_states, _wrong_shape, _truncated_file], ids=lambda f: f.__name__
)
def test_bad_data_file(tmp_path, data_copy, damage):
    path = _loc_train(data_copy)
    message = damage(path)
    with pytest.raises(ValueError) as err:
        train.train_and_evaluate(flagfile_config(data_dir=data_copy), str(tmp_path / "run"))
    assert message in str(err.value) and data_copy in str(err.value)


# ----------------------------------------------------------------------------------------
# API.


def test_api_unknown_proposal():
    with pytest.raises(ValueError, match="unknown proposal 'magic'; expected one of"):
        structure.make_move("magic", 2, 4)


def test_api_unknown_system():
    with pytest.raises(ValueError, match="unknown system 'pendulum'"):
        config_lib.Config(system="pendulum")


def test_api_zero_tasks():
    bank = ModuleBank(2, (8,), (8,))
    with pytest.raises(ValueError, match="num_tasks must be positive, got 0"):
        bouncegrad.init_train_state(
            np.zeros(2, np.uint32), bank, optax.adam(1e-3), 0, 4, initial_temperature=1.0
        )


def test_api_batch_not_divisible_by_devices():
    with pytest.raises(ValueError, match="batch_size=10 is not divisible by the 4 devices"):
        distributed.check_divisible(4, batch_size=10, num_train=40)


def test_api_model_axis_not_dividing_devices():
    with pytest.raises(ValueError, match="model_axis_size=2 must be >= 1 and divide"):
        distributed.make_mesh(model_axis_size=2, devices=distributed.jax.devices()[:1])


def test_api_prediction_too_few_frames():
    states = np.zeros((2, 10, 4, 4), np.float32)
    with pytest.raises(ValueError, match="need more than start_frame \\+ horizon = 25 frames"):
        evaluate.prediction_mse(None, None, states, np.zeros((2, 12), np.int32), 20, 5)


def test_api_structures_labels_mismatch():
    with pytest.raises(ValueError, match=r"structures \(2, 12\) and labels \(2, 6\) differ"):
        metrics.edge_accuracy(np.zeros((2, 12), np.int32), np.zeros((2, 6), np.int32), np.arange(2))


def test_api_negative_epoch():
    with pytest.raises(ValueError, match="seed and epoch must be non-negative"):
        batching.task_batches(40, 10, 0, -1)


# Tests of this file that are not bad inputs (README: the catalogue's size is printed by
#   pytest --collect-only tests/test_hostile_inputs.py -k "not flagfile_parses and not
#   catalogue_size" | grep -c ::
NOT_BAD_INPUTS = "not flagfile_parses and not catalogue_size"


def test_catalogue_size():
    """The catalogue's size is what pytest collects (never a hand-kept literal): at least 20
    distinct bad inputs, and the number the README states, if it states one."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider"]
        + [os.path.abspath(__file__), "-k", NOT_BAD_INPUTS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert proc.returncode == 0 and ids, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(set(ids)) == len(ids) >= 20
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        stated = [int(n) for n in re.findall(r"(\d+) bad inputs", f.read())]
    assert all(n == len(ids) for n in stated), (stated, len(ids))

"""Test configuration: strict rank promotion (STYLE.md); float64 is scoped per test.

Float64 tests use ``with jax.enable_x64(True):`` (a context manager in jax 0.10), so
x64 never leaks into other tests.
"""

import dataclasses
import os
import subprocess
import sys

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


# ----------------------------------------------------------------------------------------
# Shared by the training tests (tests/test_train.py, test_distributed.py,
# test_hostile_inputs.py): the CI flagfile's config, its dataset (generated once per
# session), and a subprocess environment with a persistent compilation cache so repeated
# CLI runs of the same program compile once.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_FLAGS = os.path.join(REPO, "experiments", "flags", "test.flags")


def flagfile_config(path: str = TEST_FLAGS, **overrides):
    """The :class:`~nri_modular.config.Config` a flagfile describes (plus overrides)."""
    from nri_modular.config import Config

    fields = {f.name: f for f in dataclasses.fields(Config)}
    defaults = Config()
    kwargs = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("--"):
                continue
            name, value = line[2:].split("=", 1)
            if name in ("workdir", "flagfile"):  # not Config fields
                continue
            if name not in fields:
                raise ValueError(f"{os.path.basename(path)}: unknown flag --{name}")
            default = getattr(defaults, fields[name].name)
            if isinstance(default, bool):
                kwargs[name] = value.lower() in ("1", "true")
            elif isinstance(default, tuple):
                kwargs[name] = tuple(int(v) for v in value.split(","))
            else:
                kwargs[name] = type(default)(value)
    kwargs.update(overrides)
    return Config(**kwargs)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """The CI flagfile's dataset, generated once per session."""
    from nri_modular.data import loading

    data_dir = str(tmp_path_factory.mktemp("tiny_data"))
    loading.load_data(flagfile_config(data_dir=data_dir))
    return data_dir


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory):
    """Environment for CLI subprocesses: repo on the path, shared compilation cache."""
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    env = dict(os.environ)
    env.update(
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        JAX_PLATFORMS="cpu",
    )
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, tiny_data_dir):
    """A workdir after the CI flagfile's run in this process (results + 2 checkpoints)."""
    workdir = str(tmp_path_factory.mktemp("smoke") / "run")
    from nri_modular import train

    train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir), workdir)
    return workdir


# The longer run the resume / multi-device tests compare against (60 BounceGrad steps;
# batch 20 splits over 1, 2 and 4 devices).
REFERENCE_FLAGS = ("--batch_size=20", "--num_epochs=30", "--checkpoint_every=4", "--log_every=4")


def cli(workdir: str, data_dir: str, *extra: str) -> list[str]:
    """Command line of the springs experiment on the CI flagfile."""
    return [
        sys.executable,
        os.path.join(REPO, "experiments", "springs.py"),
        f"--flagfile={TEST_FLAGS}",
        f"--data_dir={data_dir}",
        f"--workdir={workdir}",
        *extra,
    ]


def run_checked(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Runs a command in the repo to completion; fails the test (with its stderr) if it fails."""
    proc = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_cli(env: dict, workdir: str, data_dir: str, *extra: str) -> subprocess.CompletedProcess:
    """Runs :func:`cli` to completion; fails the test (with its stderr) if it fails."""
    return run_checked(cli(workdir, data_dir, *extra), env)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tiny_data_dir, subprocess_env):
    """Workdir of one uninterrupted 1-device CLI run with :data:`REFERENCE_FLAGS`."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    run_cli(subprocess_env, workdir, tiny_data_dir, *REFERENCE_FLAGS)
    return workdir


def reference_config(data_dir: str, **overrides):
    """Config of :func:`reference_run`."""
    kw = {f.split("=")[0][2:]: int(f.split("=")[1]) for f in REFERENCE_FLAGS}
    kw.update(overrides)
    return flagfile_config(data_dir=data_dir, **kw)


def final_state(workdir: str, config):
    """The latest checkpoint of ``workdir`` restored on one device, as numpy leaves."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from nri_modular import distributed, train

    sample = np.zeros((1, config.obs_frames, config.num_particles, 4), np.float32)
    setup = train.build(config, distributed.make_mesh(devices=jax.devices()[:1]), sample)
    manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"))
    state = manager.restore(
        manager.latest_step(), args=ocp.args.StandardRestore(setup.abstract_state)
    )
    return jax.tree.map(np.asarray, state)

"""Test configuration: strict rank promotion (STYLE.md); float64 is scoped per test.

Float64 tests use ``with jax.enable_x64(True):`` (a context manager in jax 0.10), so
x64 never leaks into other tests.

Speed (the suite is compile-bound): it runs on pytest-xdist workers (``-n auto --dist
loadgroup``, pyproject.toml); every process of a test run (workers, CLI subprocesses)
shares one persistent compilation cache, so a program compiles once per run
(:func:`pytest_configure`); the expensive session fixtures (the tiny dataset, the trained
runs) are built once per run and shared by the workers (:func:`build_once`); tests that
share an expensive module-scoped fixture run on one worker (:data:`GROUPED_FIXTURES`).
"""

import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

# The test run's compilation cache: created by the first pytest process (the xdist
# controller), inherited by its workers and by every subprocess through the environment.
CACHE_ENV = "NRI_MODULAR_TEST_JAX_CACHE"


def pytest_configure(config):
    """Every process of the test run compiles a program once: a persistent compilation
    cache shared by all of them (set before this process compiles anything). Removed with
    the run."""
    cache = os.environ.get(CACHE_ENV)
    if not cache:
        cache = tempfile.mkdtemp(prefix="nri_modular_test_jax_cache_")
        os.environ[CACHE_ENV] = cache
        config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# Module-scoped fixtures that take long to build (a trained run, an evaluation, a
# generated dataset): the tests using one run on one xdist worker, which builds it once.
GROUPED_FIXTURES = {"own_test_split", "ours", "springs_200", "springs_dir"}


# Files holding the longest tests (multi-process runs, CLI runs, training to a result):
# they start first, so the workers end together instead of one waiting on a late long
# test. Only the order changes; every test still runs.
RUN_FIRST = (
    "test_distributed.py",
    "test_table.py",
    "test_search_correctness.py",
    "test_train.py",
    "test_structure_priors.py",
    "test_baselines.py",
    "test_upper_bound.py",
    "test_bouncegrad.py",
    "test_true_edges.py",
)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(RUN_FIRST)))  # stable
    for item in items:
        used = sorted(GROUPED_FIXTURES.intersection(item.fixturenames))
        if used:
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{used[0]}"))


def build_once(tmp_path_factory, name: str, build) -> str:
    """``build(path)`` once per test run, however many xdist workers ask: the first one
    builds under a file lock, the others wait for it and share the result. ``path`` (a
    folder that does not exist yet) is returned. Without xdist: once per session."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's base folder, above the workers' own
    path = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / f"{name}.done").exists():
            shutil.rmtree(path, ignore_errors=True)  # what a failed build left
            build(str(path))
            (root / f"{name}.done").touch()
    return str(path)


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
    """The CI flagfile's dataset, generated once per test run."""
    from nri_modular import loading

    def build(data_dir):
        os.makedirs(data_dir)
        loading.load_data(flagfile_config(data_dir=data_dir))

    return build_once(tmp_path_factory, "tiny_data", build)


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory):
    """Environment for CLI subprocesses: repo on the path, the test run's compilation
    cache."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
        JAX_COMPILATION_CACHE_DIR=os.environ[CACHE_ENV],
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        JAX_PLATFORMS="cpu",
    )
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, tiny_data_dir):
    """A workdir after the CI flagfile's run in-process (results + 2 checkpoints); tests
    read it or copy it, never change it."""
    from nri_modular import train

    def build(workdir):
        train.train_and_evaluate(flagfile_config(data_dir=tiny_data_dir), workdir)

    return build_once(tmp_path_factory, "trained_run", build)


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
    return build_once(
        tmp_path_factory,
        "reference_run",
        lambda workdir: run_cli(subprocess_env, workdir, tiny_data_dir, *REFERENCE_FLAGS),
    )


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


def teacher_problem(num_tasks: int = 8, frames: int = 6, num_nodes: int = 4):
    """Trajectories of a random teacher bank (K = 2) rolled out under planted structures.

    Returns:
      ``(bank, teacher params, planted int32 [B, E], states float32 [B, frames, n, 4])``;
      the planted structure has zero one-step loss under the teacher.
    """
    import jax.numpy as jnp
    import numpy as np

    from nri_modular import gnn
    from nri_modular.modules import ModuleBank

    bank = ModuleBank(2, (16, 16), (16, 16))
    teacher = bank.init(jax.random.PRNGKey(42))
    out = teacher["node"]["params"]["Dense_2"]  # gentle dynamics: rollouts stay O(1)
    teacher["node"]["params"]["Dense_2"] = {**out, "kernel": out["kernel"] * 0.2}
    edges = num_nodes * (num_nodes - 1)
    planted = jax.random.randint(jax.random.PRNGKey(1), (num_tasks, edges), 0, 2)
    initial = jax.random.normal(jax.random.PRNGKey(2), (num_tasks, num_nodes, 4))
    traj = gnn.rollout(bank, teacher, initial, planted, frames - 1)
    states = jnp.concatenate([initial[:, None], traj], axis=1)
    return bank, teacher, np.asarray(planted, np.int32), np.asarray(states, np.float32)


def own_config(folder, **overrides):
    """A tiny test run's config on one's own dataset ``mine`` in ``folder`` (4 objects in
    3-D by default; 12 / 4 / 4 systems of 8 / 8 / 14 frames)."""
    kwargs = dict(
        system="",
        dataset="mine",
        data_dir=folder,
        num_particles=4,
        state_dim=6,
        num_train=12,
        num_valid=4,
        num_test=4,
        batch_size=6,
        obs_frames=8,
        horizon=5,
        p=3,
    )
    return flagfile_config(**(kwargs | overrides))

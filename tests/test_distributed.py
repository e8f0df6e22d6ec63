"""Meshes and shardings; the same run on 1 device, 4 devices and 2 ``jax.distributed``
processes (interrupted by SIGTERM and resumed) gives the same structures and parameters.

Multi-device runs are subprocesses: ``XLA_FLAGS=--xla_force_host_platform_device_count``
must be set before JAX starts, and this process already has one CPU device.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    REFERENCE_FLAGS,
    REPO,
    build_once,
    cli,
    final_state,
    flagfile_config,
    reference_config,
    run_checked,
    run_cli,
)

from nri_modular import bouncegrad, distributed

TIMING_KEYS = ("wall_seconds", "train_seconds", "test_search_seconds")


def test_threefry_partitionable_is_on():
    distributed.configure()
    assert jax.config.jax_threefry_partitionable


def test_mesh_and_state_shardings():
    mesh = distributed.make_mesh()
    assert mesh.axis_names == ("data", "model")
    assert dict(mesh.shape) == {"data": jax.device_count(), "model": 1}
    with pytest.raises(ValueError, match="model_axis_size=3 must be >= 1 and divide"):
        distributed.make_mesh(model_axis_size=3, devices=jax.devices() * 2)
    abstract = bouncegrad.TrainState(
        params={"w": jax.ShapeDtypeStruct((3, 2), jnp.float32)},
        opt_state=(),
        structures=jax.ShapeDtypeStruct((8, 12), jnp.int32),
        energies=jax.ShapeDtypeStruct((8,), jnp.float32),
        temperature=jax.ShapeDtypeStruct((), jnp.float32),
        step=jax.ShapeDtypeStruct((), jnp.int32),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
    )
    sh = distributed.train_state_shardings(mesh, abstract)
    assert sh.structures.spec == jax.sharding.PartitionSpec("data")
    assert sh.energies.spec == jax.sharding.PartitionSpec("data")
    assert sh.params["w"].spec == jax.sharding.PartitionSpec()
    assert sh.temperature.spec == jax.sharding.PartitionSpec()


def test_check_divisible_names_the_size():
    distributed.check_divisible(4, batch_size=8, num_train=40)
    with pytest.raises(ValueError, match=r"batch_size=10 is not divisible by the 4 devices"):
        distributed.check_divisible(4, batch_size=10)


def test_put_batch_gathers_rows():
    mesh = distributed.make_mesh()
    data = np.arange(24, dtype=np.float32).reshape(6, 4)
    (out,) = distributed.put_batch(mesh, (data,), rows=np.asarray([5, 0, 2]))
    np.testing.assert_array_equal(distributed.to_host(out), data[[5, 0, 2]])


def _results(workdir):
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
        return {k: v for k, v in json.load(f).items() if k not in TIMING_KEYS}


def _assert_same_run(workdir, reference_run, data_dir, config=None):
    got, want = _results(workdir), _results(reference_run)
    assert got["edge_accuracy"] == want["edge_accuracy"]
    assert got["train_edge_accuracy"] == want["train_edge_accuracy"]
    assert got["module_to_relation"] == want["module_to_relation"]
    np.testing.assert_allclose(got["mse_per_step"], want["mse_per_step"], rtol=1e-4)
    config = config or reference_config(data_dir)
    state, ref = final_state(workdir, config), final_state(reference_run, config)
    np.testing.assert_array_equal(state.structures, ref.structures)
    np.testing.assert_array_equal(state.step, ref.step)
    np.testing.assert_array_equal(state.rng, ref.rng)
    np.testing.assert_allclose(state.temperature, ref.temperature, rtol=1e-6)
    # Float leaves to fp tolerance: other reduction orders (all-reduce of gradients) change
    # the last bits; after 60 Adam steps parameters agree to ~1e-5 relative (norm), Adam's
    # gradient moments to ~1e-4.
    for tree, ref_tree, tol in (
        (state.params, ref.params, 1e-4),
        ((state.opt_state, state.energies), (ref.opt_state, ref.energies), 1e-3),
    ):
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref_tree), strict=True):
            if a.dtype.kind == "f":
                assert np.linalg.norm(a - b) <= tol * np.linalg.norm(b) + 1e-12
            else:
                np.testing.assert_array_equal(a, b)


def test_four_devices_equal_one_device(tmp_path, reference_run, tiny_data_dir, subprocess_env):
    workdir = str(tmp_path / "run4")
    env = dict(subprocess_env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = run_cli(env, workdir, tiny_data_dir, *REFERENCE_FLAGS)
    assert "mesh {'data': 4, 'model': 1} over 4 devices" in proc.stderr
    _assert_same_run(workdir, reference_run, tiny_data_dir)


# Virtual task shards (a multiple of every device count below): each device sees only the
# tasks whose state it holds, each host loads only those; same run on 1, 2 and 4 devices.
SHARDED = ("--task_shards=4",)


@pytest.fixture(scope="module")
def sharded_reference_run(tmp_path_factory, tiny_data_dir, subprocess_env):
    """One-device run of :data:`REFERENCE_FLAGS` with :data:`SHARDED` (once per test run,
    shared by the xdist workers)."""
    return build_once(
        tmp_path_factory,
        "sharded_reference_run",
        lambda workdir: run_cli(subprocess_env, workdir, tiny_data_dir, *REFERENCE_FLAGS, *SHARDED),
    )


def test_four_devices_with_task_shards_equal_one_device(
    tmp_path, sharded_reference_run, tiny_data_dir, subprocess_env
):
    workdir = str(tmp_path / "run4")
    env = dict(subprocess_env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = run_cli(env, workdir, tiny_data_dir, *REFERENCE_FLAGS, *SHARDED)
    assert "over 4 devices" in proc.stderr and "not a multiple" not in proc.stderr
    config = reference_config(tiny_data_dir, task_shards=4)
    _assert_same_run(workdir, sharded_reference_run, tiny_data_dir, config)


def test_checkpoint_of_one_device_resumed_on_four(
    tmp_path, sharded_reference_run, tiny_data_dir, subprocess_env
):
    """A run continued on another device count resumes exactly (what a job requeued on
    other hardware does): the first 30 of 60 steps on one device (a finished 15-epoch run),
    the rest from its checkpoint on four (same task_shards), ends in the 60-step run's state."""
    workdir = str(tmp_path / "run1to4")
    run_cli(subprocess_env, workdir, tiny_data_dir, *REFERENCE_FLAGS, *SHARDED, "--num_epochs=15")
    env = dict(subprocess_env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = run_cli(env, workdir, tiny_data_dir, *REFERENCE_FLAGS, *SHARDED)
    assert "resumed from checkpoint at step 30" in proc.stderr and "over 4 devices" in proc.stderr
    config = reference_config(tiny_data_dir, task_shards=4)
    _assert_same_run(workdir, sharded_reference_run, tiny_data_dir, config)


def test_four_devices_with_replicated_task_state_equal_one_device(tmp_path, subprocess_env):
    """42 training tasks do not split over 4 devices, so every task's structure and energy
    are replicated (:func:`distributed.train_state_shardings`): same run as on 1 device."""
    data_dir = str(tmp_path / "data42")
    extra = ("--num_train=42", "--batch_size=20", "--num_epochs=6", "--checkpoint_every=4")
    workdirs = {}
    for devices in (1, 4):
        workdirs[devices] = str(tmp_path / f"run{devices}")
        env = dict(subprocess_env)
        if devices > 1:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        proc = run_cli(env, workdirs[devices], data_dir, *extra)
        assert f"over {devices} devices" in proc.stderr
    config = flagfile_config(
        data_dir=data_dir, num_train=42, batch_size=20, num_epochs=6, checkpoint_every=4
    )
    assert config.num_train % 4  # the replicated case
    _assert_same_run(workdirs[4], workdirs[1], data_dir, config)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _checkpoint_steps(workdir):
    """Finalised checkpoint steps (Orbax renames a complete save to its step number)."""
    path = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(path):
        return []
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def _start_two_processes(workdir, data_dir, env, logs, *flags):
    """Both processes of a localhost ``jax.distributed`` job on the CI flagfile + ``flags``."""
    port = _free_port()
    return [
        subprocess.Popen(
            cli(
                workdir,
                data_dir,
                *flags,
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        for i, log in enumerate(logs)
    ]


def _wait_two_processes(procs, logs, timeout=300):
    """Waits for both processes (killing leftovers); returns their stderr logs."""
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    errs = []
    for log in logs:
        log.seek(0)
        errs.append(log.read())
        log.close()
    return errs


def _logs(tmp_path, name):
    return [open(tmp_path / f"{name}{i}.log", "w+", encoding="utf-8") for i in range(2)]


def test_two_processes_equal_one_device(tmp_path, trained_workdir, tiny_data_dir, subprocess_env):
    """task_shards=1: every process loads all tasks and the per-task state is gathered
    across processes (the CI flagfile's 8 steps; gloo collectives on 2 CPUs are slow)."""
    workdir = str(tmp_path / "run2p")
    logs = _logs(tmp_path, "process")
    procs = _start_two_processes(workdir, tiny_data_dir, subprocess_env, logs)
    errs = _wait_two_processes(procs, logs)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errs)
    assert "over 2 devices, 2 process(es)" in errs[0], errs[0][-3000:]
    assert "this host loads" not in errs[0] and "not a multiple" in errs[0]
    _assert_same_run(
        workdir, trained_workdir, tiny_data_dir, flagfile_config(data_dir=tiny_data_dir)
    )


def test_two_processes_sigterm_then_resume_equal_one_device(
    tmp_path, sharded_reference_run, tiny_data_dir, subprocess_env
):
    """SIGTERM to one process of a 2-process job, each process holding only its 20 of the
    40 training tasks: both agree on the stop step (at a ``--log_every`` boundary),
    checkpoint it and exit 0; rerunning the same command resumes and ends in the 1-device
    :func:`sharded_reference_run`'s state."""
    workdir = str(tmp_path / "run2p")
    config = reference_config(tiny_data_dir, task_shards=4)
    total = config.num_train // config.batch_size * config.num_epochs  # 60

    # 1. SIGTERM to process 1 only (process 0 must learn of it through the collective)
    # once the first checkpoint exists (both processes are then in the training loop).
    logs = _logs(tmp_path, "interrupted")
    procs = _start_two_processes(
        workdir, tiny_data_dir, subprocess_env, logs, *REFERENCE_FLAGS, *SHARDED
    )
    sent = False
    try:
        deadline = time.time() + 300
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if _checkpoint_steps(workdir):
                procs[1].send_signal(signal.SIGTERM)
                sent = True
                break
            time.sleep(0.01)
    finally:
        if not sent:
            for p in procs:
                p.kill()
        errs = _wait_two_processes(procs, logs)
    tails = "\n".join(f"--- process {i}:\n{e[-3000:]}" for i, e in enumerate(errs))
    assert sent, f"no checkpoint while both processes ran (one ended or timed out):\n{tails}"
    assert [p.returncode for p in procs] == [0, 0], tails
    assert "over 2 devices, 2 process(es)" in errs[0]
    for e in errs:
        assert "this host loads 20 of the 40 training tasks (task_shards=4)" in e, tails
    stops = [re.findall(r"preempted: checkpoint at step (\d+) written", e) for e in errs]
    assert all(len(s) == 1 for s in stops), f"not preempted (finished first?):\n{tails}"
    stopped_at = int(stops[0][0])
    assert int(stops[1][0]) == stopped_at, tails  # both processes stop at the same step
    assert stopped_at % config.log_every == 0 and 0 < stopped_at < total, tails
    assert _checkpoint_steps(workdir)[-1] == stopped_at
    assert not os.path.exists(os.path.join(workdir, "results.json"))

    # 2. The same command again: resumes at the stop step and runs to the end.
    logs = _logs(tmp_path, "resumed")
    errs = _wait_two_processes(
        _start_two_processes(
            workdir, tiny_data_dir, subprocess_env, logs, *REFERENCE_FLAGS, *SHARDED
        ),
        logs,
    )
    tails = "\n".join(f"--- process {i}:\n{e[-3000:]}" for i, e in enumerate(errs))
    assert all("preempted" not in e for e in errs), tails
    assert f"resumed from checkpoint at step {stopped_at}" in errs[0], tails
    assert _checkpoint_steps(workdir)[-1] == total
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        logged = [json.loads(line)["step"] for line in f]
    assert logged == list(range(config.log_every, total + 1, config.log_every))
    _assert_same_run(workdir, sharded_reference_run, tiny_data_dir, config)


def test_task_shards_leave_only_the_gradient_all_reduce(subprocess_env):
    """benchmarks/step_cost.py on 4 devices: with task_shards=1 the blocked step needs
    all-gathers (global per-task gathers on one super-graph); with 4 the only
    collective left is the all-reduce of gradients and metrics, for every proposal."""
    proposals = ("uniform", "exact_local", "exact_sweep", "blocked_gibbs")
    proc = run_checked(
        [
            sys.executable,
            os.path.join(REPO, "benchmarks", "step_cost.py"),
            "--devices=4",
            "--num_train=40",
            "--width=16",
            "--batch_size=8",
            "--task_shards=1,4",
            "--edge_compute=blocked",
            f"--proposal={','.join(proposals)}",
        ],
        subprocess_env,
    )
    rows = {
        (cells[0], int(cells[2])): cells[-1]
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and "| blocked |" in line
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {(p, v) for p in proposals for v in (1, 4)}, proc.stdout
    for p in proposals:
        assert "all-gather" in rows[p, 1], rows[p, 1]
        assert rows[p, 4].startswith("all-reduce") and "," not in rows[p, 4], (p, rows[p, 4])

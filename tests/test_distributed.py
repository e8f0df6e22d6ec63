"""Meshes and shardings; the same run on 1 device, 4 devices and 2 ``jax.distributed``
processes gives the same structures and parameters.

Multi-device runs are subprocesses: ``XLA_FLAGS=--xla_force_host_platform_device_count``
must be set before JAX starts, and this process already has one CPU device.
"""

import json
import os
import socket
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    REFERENCE_FLAGS,
    REPO,
    cli,
    final_state,
    flagfile_config,
    reference_config,
    run_cli,
)

from nri_modular import bouncegrad, distributed, train

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


def test_collective_bytes_parses_hlo():
    hlo = "\n".join(
        [
            "  %a = f32[16,8]{1,0} all-reduce(f32[16,8]{1,0} %x), replica_groups={}",
            "  %b = (s32[10,12]{1,0}, s32[40,12]{1,0}) all-gather-start(s32[10,12]{1,0} %y)",
            "  %c = s32[40,12]{1,0} all-gather-done(%b)",
            "  %d = f32[] add(f32[] %p, f32[] %q)",
        ]
    )
    out = distributed.collective_bytes(hlo)
    assert out == {
        "all-reduce": {"count": 1, "bytes": 16 * 8 * 4},
        "all-gather": {"count": 1, "bytes": 40 * 12 * 4},
    }


def test_compiled_step_stats_on_one_device(tiny_data_dir):
    config = reference_config(tiny_data_dir)
    sample = np.zeros((1, config.obs_frames, config.num_particles, 4), np.float32)
    setup = train.build(config, distributed.make_mesh(devices=jax.devices()[:1]), sample)
    stats = distributed.compiled_stats(
        setup.step_fn.lower(setup.abstract_state, setup.abstract_batch).compile()
    )
    assert stats["argument_bytes"] > 0 and stats["flops"] > 0
    assert stats["collectives"] == {}  # one device: no communication


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


def test_two_processes_equal_one_device(tmp_path, trained_workdir, tiny_data_dir, subprocess_env):
    # The CI flagfile's 8 steps (gloo collectives between 2 CPU processes are slow), compared
    # with the same run on one device in this process.
    workdir = str(tmp_path / "run2p")
    port = _free_port()
    logs = [open(tmp_path / f"process{i}.log", "w+", encoding="utf-8") for i in range(2)]
    procs = [
        subprocess.Popen(
            cli(
                workdir,
                tiny_data_dir,
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            env=subprocess_env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=logs[i],
        )
        for i in range(2)
    ]
    try:
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    errs = []
    for log in logs:
        log.seek(0)
        errs.append(log.read())
        log.close()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errs)
    assert "over 2 devices, 2 process(es)" in errs[0]
    _assert_same_run(
        workdir, trained_workdir, tiny_data_dir, flagfile_config(data_dir=tiny_data_dir)
    )

"""Devices, meshes and shardings: the only module that knows about devices.

A run uses one 2-D :class:`jax.sharding.Mesh` with axes ``("data", "model")``:

* ``data`` — tasks. Batches (``[B, ...]``) and the per-task training state
  (``structures [N, E]``, ``energies [N]``) are split along their leading task axis.
* ``model`` — reserved (default size 1). Parameters are replicated over it; with
  ``model > 1`` each task shard is computed redundantly by the ``model`` devices. It is
  the hook for tensor-parallel module banks, which this model (MLPs of width 64-256)
  does not need.

Module parameters, the proposal network, optimiser states, temperature, step and rng are
replicated. The same jitted code runs on 1 CPU, 8 GPUs or a TPU pod slice; only the mesh
(i.e. the device count and flags) changes.

Randomness does not depend on the device count: :func:`configure` turns on
``jax_threefry_partitionable`` (the default since JAX 0.5, set explicitly here), under
which a sharded ``jax.random`` draw equals the unsharded one bit for bit, and every key
is derived from the step (``fold_in(rng, step)``) and not from a device index.

Multi-host: :func:`initialize` calls :func:`jax.distributed.initialize` when a
coordinator is given or a multi-process SLURM / TPU job is detected. Every host computes
the same global task order and builds only its own shard of each batch
(:func:`put_batch`, via :func:`jax.make_array_from_callback`).

Locality: with ``task_shards`` (``V`` virtual shards of the training tasks, see
:func:`nri_modular.data.batching.task_batches`) a multiple of the data-axis size, device
``d`` only ever sees the tasks ``[d N/D, (d+1) N/D)`` whose per-task state it holds: a
host loads only those (:func:`local_task_rows`), and the step's per-task gathers and
blocked edge layouts are batched over the ``V`` blocks, so they partition without
communication; the gradient all-reduce is all that crosses devices.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"


def configure() -> None:
    """Process-wide settings that make results independent of the device count."""
    jax.config.update("jax_threefry_partitionable", True)


def _detected_cluster() -> str | None:
    """Name of a multi-process job environment JAX can auto-configure, else None."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return "slurm"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts:
        return "tpu"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "mpi"
    return None


def check_distributed_flags(coordinator_address: str, num_processes: int, process_id: int) -> None:
    """Validates the multi-host flags (before anything starts).

    Args:
      coordinator_address: ``host:port`` of process 0, or ``""`` (auto-detect / single).
      num_processes: total processes, or 0 (auto).
      process_id: this process's index in ``[0, num_processes)``, or -1 (auto).

    Raises:
      ValueError: naming the inconsistent flag.
    """
    if coordinator_address:
        if not re.fullmatch(r"[^\s:]+:\d{1,5}", coordinator_address):
            raise ValueError(f"coordinator_address must be host:port, got {coordinator_address!r}")
        if num_processes < 1:
            raise ValueError(
                f"--coordinator_address needs --num_processes >= 1, got {num_processes}"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"--process_id must be in [0, {num_processes}) with --coordinator_address, "
                f"got {process_id}"
            )
    elif num_processes > 1 or process_id >= 0:
        raise ValueError(
            "--num_processes / --process_id need --coordinator_address (or run under SLURM / "
            "a TPU pod slice, where they are detected)"
        )


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
    """Starts :func:`jax.distributed` if this is a multi-process run; idempotent.

    Must run before the first JAX computation. Explicit flags win; otherwise a
    multi-process SLURM, TPU or MPI job is auto-detected; otherwise nothing happens.

    Returns:
      True if JAX runs distributed (``jax.process_count()`` may exceed 1).
    """
    check_distributed_flags(coordinator_address, num_processes, process_id)
    configure()
    if jax.distributed.is_initialized():
        return True
    if coordinator_address:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    elif (cluster := _detected_cluster()) is not None:
        logging.info("multi-process %s job detected: jax.distributed.initialize()", cluster)
        jax.distributed.initialize()
    else:
        return False
    logging.info(
        "jax.distributed: process %d/%d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def make_mesh(model_axis_size: int = 1, devices: list | None = None) -> Mesh:
    """Mesh ``("data", "model")`` over all (global) devices.

    Args:
      model_axis_size: devices per ``model`` group; must divide the device count.
      devices: defaults to ``jax.devices()``.

    Returns:
      Mesh of shape ``[num_devices // model_axis_size, model_axis_size]``.
    """
    devices = list(jax.devices() if devices is None else devices)
    if model_axis_size < 1 or len(devices) % model_axis_size:
        raise ValueError(
            f"model_axis_size={model_axis_size} must be >= 1 and divide the device count "
            f"{len(devices)}"
        )
    shape = (len(devices) // model_axis_size, model_axis_size)
    # Auto axes: the compiler propagates shardings through the (sharding-unaware) model
    # code; jax.make_mesh defaults to Explicit axes, which would need annotations there.
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh(shape, (DATA_AXIS, MODEL_AXIS), axis_types=auto, devices=devices)


def data_axis_size(mesh: Mesh) -> int:
    """Number of task shards."""
    return mesh.shape[DATA_AXIS]


def check_divisible(mesh: Mesh | int, **sizes: int) -> None:
    """Every named task count must split evenly over the ``data`` axis.

    Args:
      mesh: a mesh, or the ``data`` axis size.
      **sizes: e.g. ``batch_size=50, num_train=50000``.

    Raises:
      ValueError: naming the first size that is not a multiple of the data-axis size.
    """
    d = mesh if isinstance(mesh, int) else data_axis_size(mesh)
    for name, value in sizes.items():
        if value % d:
            raise ValueError(
                f"{name}={value} is not divisible by the {d} devices of the data axis; use a "
                f"multiple of {d} (e.g. {max(d, value - value % d)}) or fewer devices"
            )


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a value every device holds whole."""
    return NamedSharding(mesh, P())


def task_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of an array whose leading axis is tasks (batch or per-task state)."""
    return NamedSharding(mesh, P(DATA_AXIS))


def train_state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
    """Shardings of a :class:`nri_modular.bouncegrad.TrainState` (same pytree structure).

    Everything is replicated except ``structures [N, E]`` and ``energies [N]``, which are
    split along the task axis when ``N`` is a multiple of the data-axis size (else they are
    replicated too: 4 MB for 50k tasks).
    """
    shardings = jax.tree.map(lambda _: replicated(mesh), abstract_state)
    if abstract_state.structures.shape[0] % data_axis_size(mesh):
        return shardings
    return shardings.replace(structures=task_sharded(mesh), energies=task_sharded(mesh))


def batch_shardings(mesh: Mesh, abstract_batch: Any) -> Any:
    """Every leaf of a batch is split along its leading (task) axis."""
    return jax.tree.map(lambda _: task_sharded(mesh), abstract_batch)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` leaves carrying their sharding (an Orbax restore target)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def put_batch(mesh: Mesh, host_arrays: Any, rows: np.ndarray | None = None) -> Any:
    """Global task-sharded arrays; each process gathers only the rows its devices hold.

    Args:
      host_arrays: pytree of arrays ``[M, ...]`` indexable by row ids (numpy, memmaps, or
        :class:`~nri_modular.data.datasets.TaskRows` holding this host's rows).
      rows: int ``[B]`` rows of ``host_arrays`` forming the batch (default: all ``M``).

    Returns:
      Pytree of ``jax.Array`` ``[B, ...]`` sharded as :func:`task_sharded`.
    """
    sharding = task_sharded(mesh)

    def put(x):
        x = x if hasattr(x, "shape") and hasattr(x, "__getitem__") else np.asarray(x)
        idx = np.arange(x.shape[0]) if rows is None else np.asarray(rows)
        shape = (len(idx), *x.shape[1:])
        check_divisible(mesh, batch_rows=len(idx))
        return jax.make_array_from_callback(shape, sharding, lambda s: np.asarray(x[idx[s[0]]]))

    return jax.tree.map(put, host_arrays)


def local_task_rows(mesh: Mesh, num_tasks: int, task_shards: int) -> np.ndarray | None:
    """Training tasks whose data this process's devices will ever read, or None for all.

    With ``task_shards`` (``V``) a multiple of the data-axis size ``D`` (and ``D`` dividing
    ``num_tasks``), device ``d`` only sees tasks ``[d N/D, (d+1) N/D)`` (see
    :func:`nri_modular.data.batching.task_batches`), the same rows of the per-task state
    it holds; a host needs the union over its devices. Otherwise any device may see any
    task: None.

    Returns:
      Sorted int64 task ids, or None when they would be all of them.
    """
    d = data_axis_size(mesh)
    if task_shards % d or num_tasks % d:
        return None
    index_map = task_sharded(mesh).addressable_devices_indices_map((num_tasks,))
    held = np.zeros(num_tasks, bool)
    for (rows,) in index_map.values():
        held[rows] = True
    return None if held.all() else np.flatnonzero(held)


def to_host(x: Any) -> Any:
    """Whole numpy copies of (possibly multi-host sharded) arrays, on every process."""

    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(get, x)


def is_primary() -> bool:
    """True on the process that writes logs, metrics and results (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier across processes (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True if ``flag`` is set on any process (a collective: call on all processes)."""
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray([flag], np.int32))
    return bool(np.asarray(flags).any())

"""``train_and_evaluate(config, workdir)``: data -> BounceGrad meta-training -> meta-test.

The one place in the package that does I/O: it caches the dataset, writes
``<workdir>/metrics.jsonl`` (one JSON line per logged step), Orbax checkpoints in
``<workdir>/checkpoints`` (resumed from the latest one when rerun with the same workdir),
``<workdir>/config.json`` and finally ``<workdir>/results.json``.

Resumption is exact: the checkpoint holds the whole :class:`~nri_modular.bouncegrad.TrainState`
(parameters, optimiser states, every task's structure and energy, temperature, step, rng),
the per-step key is ``fold_in(rng, step)`` and the task order of epoch ``e`` depends only
on ``(seed, e)``, so a run killed at any point (SIGKILL included) and rerun ends with the
same result as an uninterrupted one. SIGTERM (preemption) checkpoints at the next step
boundary and exits with code 0.

Devices: the step, the meta-test search and the rollouts run on the mesh of
:mod:`nri_modular.distributed` (1 CPU, several GPUs, a TPU slice, several hosts): only
flags change; with ``--task_shards`` a multiple of the data-axis size every host loads only
its own training tasks and the step needs no communication but the gradient all-reduce.
A damaged latest checkpoint is an error naming it (see
:func:`restore_checkpoint`); no checkpoint is ever deleted except by Orbax's
keep-the-last-N rotation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from nri_modular import bouncegrad, distributed, evaluate, proposal_net
from nri_modular.config import Config
from nri_modular.data import datasets
from nri_modular.modules import ModuleBank

# Fields that change the shapes in a checkpoint: resuming with other values is an error.
_STATE_FIELDS = (
    "system",
    "num_particles",
    "num_train",
    "num_modules",
    "edge_hidden",
    "node_hidden",
    "proposal",
    "test_proposal",
    "proposal_hidden",
    "task_shards",  # the data order (not a shape): another value would not resume exactly
)


def quiet_library_logs() -> None:
    """Keeps Orbax's per-save INFO lines out of the training log (warnings still show)."""
    import logging as std_logging

    class _DropOrbaxInfo(std_logging.Filter):
        def filter(self, record):
            return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname

    for handler in std_logging.getLogger().handlers + std_logging.getLogger("absl").handlers:
        handler.addFilter(_DropOrbaxInfo())
    logging.get_absl_handler().addFilter(_DropOrbaxInfo())


def build_bank(config: Config) -> ModuleBank:
    """The module bank the config describes."""
    return ModuleBank(
        config.num_modules,
        config.edge_hidden,
        config.node_hidden,
        init_spread=config.module_init_spread,
    )


def bouncegrad_config(config: Config) -> bouncegrad.BounceGradConfig:
    """The static BounceGrad settings of a run."""
    return bouncegrad.BounceGradConfig(
        p=config.p,
        sa_steps=config.sa_steps,
        refresh_energy=config.refresh_energy,
        temperature_decay_steps=config.temperature_decay_steps,
        proposal=config.proposal,
        uniform_mix=config.uniform_mix,
        exact_stride=config.exact_stride,
        num_types=2,
        block_rows=config.block_rows,
        edge_compute=config.edge_compute,
        task_shards=config.task_shards,
    )


def search_config(config: Config) -> evaluate.SearchConfig:
    """The meta-test structure-search settings of a run."""
    return evaluate.SearchConfig(
        num_steps=config.test_sa_steps,
        t_start=config.test_t_start,
        t_end=config.test_t_end,
        p=config.p,
        batch_size=config.test_batch_size,
        proposal=config.test_proposal,
        uniform_mix=config.test_uniform_mix,
        exact_stride=1,
        block_rows=config.block_rows,
        edge_compute=config.edge_compute,
        groups=config.task_shards,
    )


def load_data(config: Config, train_rows: np.ndarray | None = None):
    """Generates (once, cached in ``config.data_dir``) and loads the dataset.

    ``train_rows``: load only these training tasks' states (one host's shard).

    Raises:
      ValueError: a damaged dataset file (the message names the directory or file).
    """
    try:
        return datasets.ensure_dataset(
            config.data_dir,
            config.system,
            num_train=config.num_train,
            num_valid=config.num_valid,
            num_test=config.num_test,
            seed=config.data_seed,
            num_particles=config.num_particles,
            train_rows=train_rows,
        )
    except (EOFError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError) or config.data_dir in str(e):
            raise
        raise ValueError(
            f"cannot load the {config.system} dataset in {config.data_dir!r} "
            f"({type(e).__name__}: {e}); a file is damaged or truncated: delete it (or the "
            "directory) to regenerate, or point --data_dir elsewhere"
        ) from e


def _config_json(config: Config) -> dict:
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def _check_workdir_config(workdir: str, config: Config) -> None:
    """Writes ``config.json``, or checks a resumed run's checkpoint shapes still fit."""
    path = os.path.join(workdir, "config.json")
    current = _config_json(config)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{path} is unreadable ({type(e).__name__}: {e}); it records the run's shapes. "
                "Restore it, or use another --workdir"
            ) from e
        if not isinstance(saved, dict):
            raise ValueError(f"{path} does not hold a JSON object; use another --workdir")
        defaults = _config_json(Config())  # fields added since the run was started
        diff = {
            k: (saved.get(k, defaults[k]), current[k])
            for k in _STATE_FIELDS
            if saved.get(k, defaults[k]) != current[k]
        }
        if diff:
            raise ValueError(
                f"workdir {workdir!r} holds a run with different "
                + ", ".join(f"{k} (checkpoint {a!r}, now {b!r})" for k, (a, b) in diff.items())
                + "; use another --workdir"
            )
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(current, f, indent=2)
    os.replace(tmp, path)


def _truncate_metrics(path: str, last_step: int) -> None:
    """Drops metric lines logged after the checkpoint being resumed (they will be redone)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= last_step]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


class CheckpointError(RuntimeError):
    """A checkpoint in the workdir cannot be used (damaged, or written by another setup)."""


class Preempted(SystemExit):
    """Raised after SIGTERM once the state is checkpointed; exits the process with code 0."""

    def __init__(self, step: int):
        super().__init__(0)
        self.step = step


def checkpoint_manager(workdir: str, config: Config) -> ocp.CheckpointManager:
    """Orbax manager keeping the last ``keep_checkpoints`` checkpoints.

    Saves are asynchronous (the device->host copy blocks, the write does not) and atomic
    (written to a temporary directory, renamed when complete: a killed save leaves no
    half-checkpoint that could be restored). Multi-host aware: every process writes its
    shards, process 0 the metadata.
    """
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    try:
        return ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
        )
    except Exception as e:  # noqa: BLE001 - re-raised with the path and the fix
        raise CheckpointError(
            f"cannot open the checkpoint directory {directory}: {type(e).__name__}: {e}. "
            "Nothing was deleted; repair or move it aside, or use another --workdir"
        ) from e


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, target):
    """Restores checkpoint ``step`` into ``target`` (shapes, dtypes, shardings).

    Never falls back silently and never deletes anything: a damaged latest checkpoint is
    an error naming its path, the intact earlier steps and how to resume from them
    (move the damaged directory aside).

    Raises:
      CheckpointError: unreadable checkpoint or shapes that differ from ``target``.
    """
    path = os.path.join(str(manager.directory), str(step))
    earlier = [s for s in manager.all_steps() if s < step]
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # noqa: BLE001 - re-raised with the path and the fix
        detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if "not compatible with the stored shape" in str(e):
            raise CheckpointError(
                f"checkpoint {path} holds arrays of other shapes than this run ({detail}); "
                "it was written with other sizes (num_particles, num_train, num_modules, "
                "hidden sizes, proposal): use another --workdir or the original flags"
            ) from e
        fix = (
            f"to resume from step {earlier[-1]}, move it aside: mv {path} {path}.damaged"
            if earlier
            else "no earlier checkpoint exists: use another --workdir to start afresh"
        )
        raise CheckpointError(
            f"checkpoint {path} (step {step}) is damaged or truncated and cannot be restored "
            f"({detail}); intact earlier steps: {earlier}; {fix}. Nothing was deleted."
        ) from e


class _StopRequest:
    """SIGTERM (preemption) sets ``requested``; the loop checkpoints and stops."""

    def __init__(self):
        self.requested = False
        self._previous = None
        self._installed = False

    def _handler(self, signum, frame):
        del frame
        logging.warning("signal %d: checkpointing at the next step boundary, then exiting", signum)
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
        return False


@dataclasses.dataclass
class Setup:
    """Everything built from a config before training (no arrays allocated).

    Attributes:
      mesh: the device mesh.
      bank: the module bank.
      step_fn: jitted ``(state, batch) -> (state, metrics)``, sharded, state donated.
      init_fn: jitted ``() -> TrainState`` producing the sharded fresh state.
      abstract_state: ``TrainState`` of ``ShapeDtypeStruct`` with shardings.
      abstract_batch: ``Batch`` of ``ShapeDtypeStruct`` with shardings.
      proposal_apply: the proposal network's apply function (or None).
    """

    mesh: Any
    bank: ModuleBank
    step_fn: Any
    init_fn: Any
    abstract_state: Any
    abstract_batch: Any
    proposal_apply: Any


def build(config: Config, mesh, sample_states: np.ndarray) -> Setup:
    """Builds the sharded, jitted BounceGrad step and state initialiser.

    Args:
      config: the run's config.
      mesh: from :func:`nri_modular.distributed.make_mesh`.
      sample_states: ``[1, T, n, 4]``; only its shape is used (batch shapes, proposal init).

    Raises:
      ValueError: batch_size / test_batch_size not divisible by the data-axis size.
    """
    distributed.check_divisible(
        mesh,
        batch_size=config.batch_size,
        test_batch_size=config.test_batch_size,
    )
    n = config.num_particles
    bank = build_bank(config)
    optimizer = optax.adam(config.learning_rate)
    proposal_init = proposal_apply = proposal_optimizer = None
    if config.uses_proposal_network:
        proposal_init, proposal_apply = proposal_net.make_proposal_network(
            config.num_modules, n, config.proposal_hidden
        )
        proposal_optimizer = optax.adam(config.proposal_learning_rate)
    # Shapes only: Flax initialisers do not read input values, and zeros make that hold on
    # every host even if they hold different tasks (multi-host, task_shards).
    sample = np.zeros_like(np.asarray(sample_states[:1, : config.obs_frames]))

    def init_state():
        proposal_params = None
        if proposal_init is not None:
            proposal_params = proposal_init(jax.random.PRNGKey(config.seed + 2), sample)
        return bouncegrad.init_train_state(
            jax.random.PRNGKey(config.seed),
            bank,
            optimizer,
            config.num_train,
            n,
            initial_temperature=config.initial_temperature,
            proposal_params=proposal_params,
            proposal_optimizer=proposal_optimizer,
        )

    abstract = jax.eval_shape(init_state)
    state_shardings = distributed.train_state_shardings(mesh, abstract)
    b, t = config.batch_size, sample_states.shape[1]
    e = n * (n - 1)
    batch_abstract = bouncegrad.Batch(
        task_ids=jax.ShapeDtypeStruct((b,), jnp.int32),
        states=jax.ShapeDtypeStruct((b, t, n, 4), jnp.float32),
        labels=jax.ShapeDtypeStruct((b, e), jnp.int32),
    )
    batch_sh = distributed.batch_shardings(mesh, batch_abstract)
    step = bouncegrad.make_bouncegrad_step(
        bank, optimizer, bouncegrad_config(config), n, proposal_apply, proposal_optimizer
    )
    step_fn = jax.jit(
        step,
        in_shardings=(state_shardings, batch_sh),
        out_shardings=(state_shardings, distributed.replicated(mesh)),
        donate_argnums=(0,),
    )
    return Setup(
        mesh=mesh,
        bank=bank,
        step_fn=step_fn,
        init_fn=jax.jit(init_state, out_shardings=state_shardings),
        abstract_state=distributed.with_shardings(abstract, state_shardings),
        abstract_batch=distributed.with_shardings(batch_abstract, batch_sh),
        proposal_apply=proposal_apply,
    )


def _host_metrics(metrics: list[dict]) -> dict:
    stacked = distributed.to_host(metrics)
    out = {}
    for k in stacked[0]:
        vals = np.asarray([m[k] for m in stacked], np.float64)
        out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


def _prepare_workdir(workdir: str, config: Config) -> None:
    if not workdir:
        raise ValueError("workdir must be given (--workdir)")
    parent = os.path.dirname(os.path.abspath(workdir))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"parent directory of workdir {workdir!r} does not exist: {parent}")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"workdir {workdir!r} exists and is not a directory")
    if distributed.is_primary():
        os.makedirs(workdir, exist_ok=True)
        _check_workdir_config(workdir, config)
    distributed.sync("workdir")


def _load_data_all_hosts(config: Config, mesh):
    """Process 0 generates the dataset if missing; then every process loads its shard.

    A host holds the training states of only the tasks its devices see when
    ``task_shards`` is a multiple of the data-axis size (:func:`distributed.local_task_rows`),
    else all of them; labels and the valid and test splits are loaded whole.
    """
    rows = distributed.local_task_rows(mesh, config.num_train, config.task_shards)
    if rows is not None:
        logging.info(
            "this host loads %d of the %d training tasks (task_shards=%d)",
            len(rows),
            config.num_train,
            config.task_shards,
        )
    if distributed.is_primary():
        data = load_data(config, rows)
    distributed.sync("dataset")
    if not distributed.is_primary():
        data = load_data(config, rows)
    return data


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` hands to meta-testing."""

    setup: Setup
    state: Any
    data: Any
    total_steps: int
    seconds: float


def train(config: Config, workdir: str) -> TrainResult:
    """Meta-trains with BounceGrad (resuming from the latest checkpoint in ``workdir``).

    Runs on every device of the mesh (``--model_axis_size``; all processes of a
    ``jax.distributed`` job). On SIGTERM it checkpoints at the next step boundary and
    raises :class:`Preempted` (exit code 0).

    Returns:
      A :class:`TrainResult` with the final (sharded) ``TrainState``.
    """
    start = time.time()
    distributed.initialize(config.coordinator_address, config.num_processes, config.process_id)
    mesh = distributed.make_mesh(config.model_axis_size)
    distributed.check_divisible(
        mesh,
        batch_size=config.batch_size,
        test_batch_size=config.test_batch_size,
    )
    _prepare_workdir(workdir, config)
    devices = distributed.data_axis_size(mesh)
    if devices > 1 and config.task_shards % devices:
        logging.warning(
            "task_shards=%d is not a multiple of the data-axis size %d: %severy "
            "host loads all training tasks and each step gathers the batch's structures "
            "across devices; --task_shards=%d keeps all of it device-local (see README, "
            "Scaling)",
            config.task_shards,
            devices,
            "edge_compute='blocked' sorts the whole batch's edges (an all-to-all, most of the "
            "work on every device), "
            if config.edge_compute == "blocked"
            else "",
            devices,
        )
    logging.info(
        "mesh %s over %d devices, %d process(es)",
        dict(mesh.shape),
        mesh.devices.size,
        jax.process_count(),
    )

    data = _load_data_all_hosts(config, mesh)
    train_split, test = data.train, data.test
    n = config.num_particles
    if train_split.states.shape[2] != n:
        raise ValueError(f"dataset has {train_split.states.shape[2]} particles, config says {n}")
    if test.states.shape[1] <= config.obs_frames + config.horizon:
        raise ValueError(
            f"test trajectories have {test.states.shape[1]} frames; need more than "
            f"obs_frames + horizon = {config.obs_frames + config.horizon}"
        )
    if config.uses_proposal_network and train_split.states.shape[1] != config.obs_frames:
        raise ValueError(
            f"the proposal network reads {config.obs_frames} frames (obs_frames) but "
            f"training trajectories have {train_split.states.shape[1]}"
        )
    setup = build(config, mesh, np.zeros((1, *train_split.states.shape[1:]), np.float32))

    manager = checkpoint_manager(workdir, config)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    latest = manager.latest_step()
    if latest is not None:
        state = restore_checkpoint(manager, latest, setup.abstract_state)
        logging.info("resumed from checkpoint at step %d", latest)
        if distributed.is_primary():
            _truncate_metrics(metrics_path, latest)
    else:
        state = setup.init_fn()

    steps_per_epoch = config.num_train // config.batch_size
    total_steps = steps_per_epoch * config.num_epochs
    states_np, labels_np = train_split.states, train_split.labels
    step = int(state.step)
    saved = latest
    window, window_start = [], time.time()
    metrics_file = open(metrics_path, "a", encoding="utf-8") if distributed.is_primary() else None
    try:
        with _StopRequest() as stop:
            while step < total_steps:
                epoch, offset = divmod(step, steps_per_epoch)
                order = datasets.task_batches(
                    config.num_train,
                    config.batch_size,
                    config.seed,
                    epoch,
                    shards=config.task_shards,
                )
                for ids in order[offset:]:
                    datasets.check_block_local(ids, config.num_train, config.task_shards)
                    ids_arr, states_arr, labels_arr = _put_batch(mesh, ids, states_np, labels_np)
                    batch = bouncegrad.Batch(task_ids=ids_arr, states=states_arr, labels=labels_arr)
                    state, metrics = setup.step_fn(state, batch)
                    window.append(metrics)
                    step += 1
                    if step % config.log_every == 0 or step == total_steps:
                        _log(
                            metrics_file,
                            window,
                            window_start,
                            step,
                            steps_per_epoch,
                            total_steps,
                            config,
                        )
                        window, window_start = [], time.time()
                    if step % config.checkpoint_every == 0 or step == total_steps:
                        manager.save(step, args=ocp.args.StandardSave(state))
                        saved = step
                    # Multi-host: agree on stopping at log boundaries (a collective).
                    check = jax.process_count() == 1 or step % config.log_every == 0
                    if check and distributed.any_process(stop.requested):
                        if saved != step:
                            manager.save(step, args=ocp.args.StandardSave(state), force=True)
                        manager.wait_until_finished()
                        logging.warning("preempted: checkpoint at step %d written; exiting", step)
                        raise Preempted(step)
        manager.wait_until_finished()
        if manager.latest_step() != total_steps:
            manager.save(total_steps, args=ocp.args.StandardSave(state), force=True)
            manager.wait_until_finished()
    finally:
        if metrics_file is not None:
            metrics_file.close()
        manager.wait_until_finished()
    return TrainResult(setup, state, data, total_steps, time.time() - start)


def _put_batch(mesh, ids: np.ndarray, states: np.ndarray, labels: np.ndarray):
    """``(task_ids [B], states [B, T, n, 4], labels [B, E])`` task-sharded on the mesh."""
    (task_ids,) = distributed.put_batch(mesh, (ids,))
    states_arr, labels_arr = distributed.put_batch(mesh, (states, labels), rows=ids)
    return task_ids, states_arr, labels_arr


def _log(metrics_file, window, window_start, step, steps_per_epoch, total_steps, config):
    m = _host_metrics(window)
    elapsed = time.time() - window_start
    m.update(
        step=step,
        epoch=step / steps_per_epoch,
        tasks_per_second=len(window) * config.batch_size / max(elapsed, 1e-9),
    )
    if metrics_file is None:
        return
    metrics_file.write(json.dumps(m) + "\n")
    metrics_file.flush()
    logging.info(
        "epoch %.2f step %d/%d | loss %.3e | accept %.2f worse-accept %.2f "
        "(target %.3f) T %.2e | train edge acc %.4f | %.0f tasks/s",
        m["epoch"],
        step,
        total_steps,
        m["loss"],
        m["accept_rate"],
        m["worse_accept_rate"],
        m["target_worse_rate"],
        m["temperature"],
        m["edge_accuracy"],
        m["tasks_per_second"],
    )


def train_and_evaluate(config: Config, workdir: str) -> dict:
    """Meta-trains with BounceGrad, then meta-tests; returns the results dict.

    Args:
      config: a validated :class:`Config`.
      workdir: output directory (created; its parent must exist).

    Returns:
      The dict written to ``<workdir>/results.json``.

    Raises:
      Preempted: on SIGTERM, after checkpointing (a ``SystemExit`` with code 0).
      CheckpointError: the latest checkpoint is damaged or of other shapes.
    """
    wall_start = time.time()
    run = train(config, workdir)
    results = meta_test(
        config,
        run.setup.bank,
        run.state,
        run.data.train.labels,
        run.data.test,
        run.setup.proposal_apply,
        mesh=run.setup.mesh,
    )
    results.update(
        num_train_tasks=config.num_train,
        train_steps=run.total_steps,
        train_seconds=run.seconds,
        wall_seconds=time.time() - wall_start,
    )
    if distributed.is_primary():
        tmp = os.path.join(workdir, "results.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, os.path.join(workdir, "results.json"))
    distributed.sync("results")
    return results


def meta_test(
    config: Config, bank: ModuleBank, state, train_labels, test, proposal_apply=None, mesh=None
) -> dict:
    """Structure search on the test tasks' observed frames, then prediction and accuracy.

    With a ``mesh``, every batch of test tasks is split over its ``data`` axis (the
    jitted search and rollout compile for those shardings).
    """
    start = time.time()
    put, fetch = jnp.asarray, np.asarray
    if mesh is not None:
        distributed.check_divisible(mesh, test_batch_size=config.test_batch_size)

        def put(x):
            return distributed.put_batch(mesh, x)

        fetch = distributed.to_host
    train_structures = distributed.to_host(state.structures)
    mapping = evaluate.module_mapping(
        train_structures, train_labels, config.num_modules, num_types=2
    )
    observed = test.states[:, : config.obs_frames]

    def progress(done, total):
        logging.info("meta-test structure search: %d/%d tasks", done, total)

    structures, _ = evaluate.search_structures(
        bank,
        state.params,
        observed,
        jax.random.PRNGKey(config.seed + 1),
        search_config(config),
        proposal_params=state.proposal_params if config.test_proposal == "blocked_gibbs" else None,
        proposal_apply=proposal_apply if config.test_proposal == "blocked_gibbs" else None,
        progress=progress,
        put=put,
        fetch=fetch,
    )
    search_seconds = time.time() - start
    mse = evaluate.prediction_mse(
        bank,
        state.params,
        test.states,
        structures,
        start_frame=config.obs_frames,
        horizon=config.horizon,
        batch_size=config.test_batch_size,
        block_rows=config.block_rows,
        edge_compute=config.edge_compute,
        put=put,
        fetch=fetch,
        groups=config.task_shards,
    )
    return {
        "system": config.system,
        "edge_accuracy": evaluate.edge_accuracy(structures, test.labels, mapping),
        "train_edge_accuracy": evaluate.edge_accuracy(train_structures, train_labels, mapping),
        "mse_1": float(mse[0]),
        "mse_10": float(mse[9]) if len(mse) >= 10 else None,
        "mse_20": float(mse[19]) if len(mse) >= 20 else None,
        "mse_per_step": [float(v) for v in mse],
        "module_to_relation": [int(v) for v in mapping],
        "num_test_tasks": int(test.states.shape[0]),
        "test_search_seconds": search_seconds,
    }


def format_results(results: dict) -> str:
    """A results table (edge accuracy, MSE at 1/10/20 steps) for the terminal."""
    lines = [
        f"{results['system']}: {results['num_test_tasks']} test tasks, "
        f"{results['num_train_tasks']} training tasks, {results['wall_seconds']:.0f} s wall",
        "| metric | value |",
        "|---|---|",
        f"| edge accuracy (test) | {100 * results['edge_accuracy']:.2f}% |",
        f"| edge accuracy (train structures) | {100 * results['train_edge_accuracy']:.2f}% |",
    ]
    for k in (1, 10, 20):
        value = results[f"mse_{k}"]
        lines.append(
            f"| MSE {k} step{'s' if k > 1 else ''} | "
            + (f"{value:.3e} |" if value is not None else "n/a (horizon too short) |")
        )
    return "\n".join(lines)

"""``train_and_evaluate(config, workdir)``: data -> BounceGrad meta-training -> meta-test.

A run flows one way: the dataset (:mod:`nri_modular.loading`), batches of tasks
(:mod:`nri_modular.data.batching`), the sharded step built here (:func:`build`), the loop
(:func:`train`), which writes metrics (:mod:`nri_modular.writers`) and checkpoints
(:mod:`nri_modular.checkpoints`), then the meta-test (:func:`nri_modular.evaluate.meta_test`)
and ``<workdir>/results.json``; :mod:`nri_modular.reporting` prints it.

In ``<workdir>``: ``config.json``, ``run.json`` (normalisation, training-data fingerprint,
module -> relation map of each checkpoint: what ``experiments/evaluate.py`` needs, see
:func:`nri_modular.checkpoints.write_run_meta`), ``metrics.jsonl`` (one JSON line per
logged step), Orbax checkpoints in ``checkpoints/`` (resumed from the latest one when rerun
with the same workdir; a resume refuses other training data, ``seed``, ``batch_size`` or
``data_seed``) and finally ``results.json``. A non-finite loss or parameter stops training
(:class:`DivergenceError`) before anything after it is saved.

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
:func:`nri_modular.checkpoints.restore_checkpoint`); no checkpoint is ever deleted except
by Orbax's keep-the-last-N rotation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from nri_modular import (
    bouncegrad,
    checkpoints,
    distributed,
    evaluate,
    graph,
    loading,
    metrics,
    proposal_net,
    reporting,
)
from nri_modular import config as config_lib
from nri_modular.config import Config
from nri_modular.data import batching, datasets
from nri_modular.modules import ModuleBank
from nri_modular.writers import MetricWriter


@dataclasses.dataclass
class Setup:
    """Everything built from a config before training (no arrays allocated).

    Attributes:
      mesh: the device mesh.
      bank: the module bank.
      step_fn: jitted ``(state, batch, budget=None) -> (state, metrics)``, sharded, state
        donated; ``budget`` (static) for batches of systems of different sizes.
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


def build(config: Config, mesh, sample_states: np.ndarray, ragged: bool = False) -> Setup:
    """Builds the sharded, jitted BounceGrad step and state initialiser.

    Args:
      config: the run's config.
      mesh: from :func:`nri_modular.distributed.make_mesh`.
      sample_states: ``[1, T, n, state_dim]``; only its shape is used (batch shapes, proposal init).
      ragged: the training systems have different sizes (batches carry ``sizes``).

    Raises:
      ValueError: batch_size / test_batch_size not divisible by the data-axis size.
    """
    distributed.check_divisible(
        mesh,
        batch_size=config.batch_size,
        test_batch_size=config.test_batch_size,
    )
    n = config.num_particles
    bank = config_lib.build_bank(config)
    optimizer = config_lib.module_optimizer(config)
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
            symmetric_structure=config.symmetric_structure,
            node_types=config.node_types,
        )

    abstract = jax.eval_shape(init_state)
    state_shardings = distributed.train_state_shardings(mesh, abstract)
    b, t = config.batch_size, sample_states.shape[1]
    e = n * (n - 1)
    batch_abstract = bouncegrad.Batch(
        task_ids=jax.ShapeDtypeStruct((b,), jnp.int32),
        states=jax.ShapeDtypeStruct((b, t, n, config.state_dim), jnp.float32),
        labels=jax.ShapeDtypeStruct((b, e), jnp.int32),
        sizes=jax.ShapeDtypeStruct((b,), jnp.int32) if ragged else None,
    )
    batch_sh = distributed.batch_shardings(mesh, batch_abstract)
    step = bouncegrad.make_bouncegrad_step(
        bank, optimizer, config_lib.bouncegrad_config(config), n, proposal_apply, proposal_optimizer
    )
    step_fn = jax.jit(
        step,
        in_shardings=(state_shardings, batch_sh),
        out_shardings=(state_shardings, distributed.replicated(mesh)),
        donate_argnums=(0,),
        static_argnums=(2,),
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
    """The mean of each step metric over a window of steps (NaN if never finite)."""
    stacked = distributed.to_host(metrics)
    out = {}
    for k in stacked[0]:
        vals = np.asarray([m[k] for m in stacked], np.float64)
        out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


def _check_data(config: Config, data) -> None:
    """Raises unless the dataset fits the config (particles, test frames, proposal input)."""
    train_split, test = data.train, data.test
    n = config.num_particles
    if train_split.states.shape[2] != n:
        raise ValueError(f"dataset has {train_split.states.shape[2]} particles, config says {n}")
    if data.state_dim != config.state_dim:
        raise ValueError(
            f"dataset has {data.state_dim} state channels per object, config says "
            f"state_dim={config.state_dim}"
        )
    ragged = data.ragged_splits
    if ragged:  # settings that do not handle systems of different sizes yet
        used = bouncegrad.unsupported_with_sizes(config_lib.bouncegrad_config(config))
        if config.test_proposal == "blocked_gibbs":
            used.append("--test_proposal=blocked_gibbs")
        if used:
            raise ValueError(
                f"the {', '.join(ragged)} split(s) hold systems of different sizes, which "
                f"{', '.join(used)} do not support yet"
            )
    needed = evaluate.frames_needed(config.obs_frames, config.horizon)
    if test.states.shape[1] < needed:
        raise ValueError(
            f"test trajectories have {test.states.shape[1]} frames; obs_frames="
            f"{config.obs_frames} and horizon={config.horizon} need {needed}"
        )
    frames = train_split.states.shape[1]
    if config.anneal_frames and not config.p < frames - config.anneal_frames:
        raise ValueError(
            f"anneal_frames={config.anneal_frames} leaves {frames - config.anneal_frames} of "
            f"the {frames} training frames to the gradient step; it needs more than "
            f"p={config.p}"
        )
    if not config.p < frames:
        raise ValueError(
            f"p={config.p} rollout steps need more than {config.p} frames, but training "
            f"trajectories have {frames}: set --p to at most {frames - 1}"
        )
    if config.uses_proposal_network and train_split.states.shape[1] != config.obs_frames:
        raise ValueError(
            f"the proposal network reads {config.obs_frames} frames (obs_frames) but "
            f"training trajectories have {train_split.states.shape[1]}"
        )


def _warn_if_not_device_local(config: Config, mesh) -> None:
    devices = distributed.data_axis_size(mesh)
    if devices > 1 and config.task_shards % devices:
        logging.warning(
            "task_shards=%d is not a multiple of the data-axis size %d: %severy "
            "host loads all training tasks and each step gathers the batch's structures "
            "across devices; --task_shards=%d keeps all of it device-local (see "
            "docs/scaling.md)",
            config.task_shards,
            devices,
            "edge_compute='blocked' sorts the whole batch's edges (an all-to-all, most of the "
            "work on every device), "
            if config.edge_compute == "blocked"
            else "",
            devices,
        )


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or parameter; nothing after it was saved."""


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def check_finite(pending: list, state, last_saved: int | None) -> None:
    """Raises :class:`DivergenceError` at the first non-finite loss or gradient norm of
    ``pending`` ``[(step, loss, grad_norm)]``, or when the state's parameters are not all
    finite.

    A loss can stay finite (say 1e31) while its gradient overflows: the gradient norm is
    checked too. Called before every checkpoint and log line, so the latest checkpoint
    stays the last good one and no results are written.
    """
    values = np.asarray([[float(v) for v in entry[1:]] for entry in pending], np.float64)
    kept = (
        f"the latest checkpoint (step {last_saved}) is the last good state"
        if last_saved is not None
        else "no checkpoint was written"
    )
    fix = "lower --learning_rate / --proposal_learning_rate, or check the data"
    bad = ~np.isfinite(values).all(axis=1) if len(values) else np.zeros(0, bool)
    if bad.any():
        first = int(np.argmax(bad))
        loss, grad_norm = values[first]
        raise DivergenceError(
            f"training diverged at step {pending[first][0]}: loss {loss:.4g}, gradient norm "
            f"{grad_norm:.4g}; {kept}; no results written; {fix}"
        )
    if pending and not bool(_all_finite((state.params, state.proposal_params))):
        raise DivergenceError(
            f"training diverged: non-finite parameters after step {pending[-1][0]}; {kept}; "
            f"no results written; {fix}"
        )


def training_structure_accuracy(
    state, train_labels, config: Config, relations: datasets.Relations | None
) -> tuple[np.ndarray | None, float | None]:
    """The module -> relation map chosen on all training tasks' current structures, and
    their edge accuracy under it (one map for all tasks, as :mod:`nri_modular.metrics`
    prescribes; never a map per batch, which flatters structures at chance).

    Returns:
      ``(map int [K], accuracy)``; ``(None, None)`` for unlabelled training data.
    """
    if train_labels is None or relations is None:
        return None, None
    structures = distributed.to_host(state.structures)
    mapping = metrics.module_mapping(
        structures, train_labels, config.num_modules, relations.num_types
    )
    return mapping, float(metrics.edge_accuracy(structures, train_labels, mapping))


def _record_map(run_meta: dict, state, data, step: int, config: Config) -> dict:
    """Adds the module -> relation map of checkpoint ``step`` (chosen on the training
    tasks' structures; None without training labels) to the run's metadata; returns it."""
    mapping, accuracy = training_structure_accuracy(
        state, data.train.labels, config, data.relations
    )
    run_meta["module_to_relation"][str(step)] = {
        "map": None if mapping is None else [int(v) for v in mapping],
        "train_edge_accuracy": accuracy,
    }
    return run_meta


def _save_run_meta(workdir: str, config: Config, run_meta: dict) -> None:
    if distributed.is_primary():
        checkpoints.write_run_meta(
            workdir,
            config,
            run_meta["normalization"],
            run_meta["train_data"],
            run_meta["module_to_relation"],
            run_meta.get("segments"),
            run_meta.get("relations", "unset"),
        )


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
    raises :class:`~nri_modular.checkpoints.Preempted` (exit code 0).

    Returns:
      A :class:`TrainResult` with the final (sharded) ``TrainState``.
    """
    # Before the lock: which process writes is known only once jax.distributed runs.
    distributed.initialize(config.coordinator_address, config.num_processes, config.process_id)
    with checkpoints.WorkdirLock(workdir) if workdir else contextlib.nullcontext():
        return _train(config, workdir)


def _train(config: Config, workdir: str) -> TrainResult:
    start = time.time()
    distributed.initialize(config.coordinator_address, config.num_processes, config.process_id)
    mesh = distributed.make_mesh(config.model_axis_size)
    distributed.check_divisible(
        mesh,
        batch_size=config.batch_size,
        test_batch_size=config.test_batch_size,
    )
    steps_per_epoch = config.num_train // config.batch_size
    total_steps = steps_per_epoch * config.num_epochs
    changed = checkpoints.prepare_workdir(workdir, config)
    _warn_if_not_device_local(config, mesh)
    logging.info(
        "mesh %s over %d devices, %d process(es)",
        dict(mesh.shape),
        mesh.devices.size,
        jax.process_count(),
    )

    data = loading.load_data_all_hosts(config, mesh)
    _check_data(config, data)
    train_split = data.train
    ragged = train_split.sizes is not None
    setup = build(
        config, mesh, np.zeros((1, *train_split.states.shape[1:]), np.float32), ragged=ragged
    )

    manager = checkpoints.checkpoint_manager(workdir, config.keep_checkpoints)
    latest = manager.latest_step()
    fingerprint = loading.train_fingerprint(config)
    run_meta = checkpoints.read_run_meta(workdir)
    if run_meta is not None and latest is not None:
        checkpoints.check_train_data(workdir, run_meta["train_data"], fingerprint)
        run_meta.setdefault("segments", [])
        run_meta["segments"].append({"start_step": int(latest), "changed": changed})
    else:  # a new run (or one from before run.json): it describes itself from now on
        run_meta = {
            "normalization": data.normalization.to_dict(),
            "relations": None if data.relations is None else dataclasses.asdict(data.relations),
            "train_data": fingerprint,
            "module_to_relation": {},
            "segments": [{"start_step": 0 if latest is None else int(latest), "changed": {}}],
        }
    _save_run_meta(workdir, config, run_meta)
    if latest is not None:
        state = checkpoints.restore_checkpoint(manager, latest, setup.abstract_state)
        logging.info("resumed from checkpoint at step %d", latest)
    else:
        state = setup.init_fn()

    states_np, labels_np = train_split.states, train_split.labels
    if labels_np is None:  # unlabelled data: -1, which the step never reads
        n = config.num_particles
        labels_np = np.full((train_split.num_tasks, n * (n - 1)), -1, np.int32)
    step = int(state.step)
    saved = latest
    window, window_start = [], time.time()
    pending = []  # (step, loss, grad_norm) not yet checked for divergence
    writer = (
        # A new run drops what a failed start (no checkpoint) left in metrics.jsonl.
        MetricWriter(workdir, resume_step=latest or 0, tensorboard=config.tensorboard)
        if distributed.is_primary()
        else None
    )
    try:
        with checkpoints.StopRequest() as stop:
            while step < total_steps:
                epoch, offset = divmod(step, steps_per_epoch)
                order = batching.task_batches(
                    config.num_train,
                    config.batch_size,
                    config.seed,
                    epoch,
                    shards=config.task_shards,
                )
                for ids in order[offset:]:
                    batching.check_block_local(ids, config.num_train, config.task_shards)
                    batch, budget = _put_batch(mesh, ids, states_np, labels_np, train_split.sizes)
                    state, step_metrics = setup.step_fn(state, batch, budget)
                    window.append(step_metrics)
                    pending.append((step + 1, step_metrics["loss"], step_metrics["grad_norm"]))
                    step += 1
                    if step % config.log_every == 0 or step == total_steps:
                        check_finite(pending, state, saved)
                        pending = []
                        record = _record(window, window_start, step, steps_per_epoch, config)
                        record["train_edge_accuracy"] = training_structure_accuracy(
                            state, train_split.labels, config, data.relations
                        )[1]
                        if writer is not None:
                            writer.write(record)
                            logging.info(reporting.format_train_progress(record, total_steps))
                        window, window_start = [], time.time()
                    if step % config.checkpoint_every == 0 or step == total_steps:
                        check_finite(pending, state, saved)
                        pending = []
                        checkpoints.save_checkpoint(manager, step, state)
                        saved = step
                        _record_map(run_meta, state, data, step, config)
                        _save_run_meta(workdir, config, run_meta)
                    # Multi-host: agree on stopping at log boundaries (a collective).
                    check = jax.process_count() == 1 or step % config.log_every == 0
                    if check and distributed.any_process(stop.requested):
                        if saved != step:
                            check_finite(pending, state, saved)
                            checkpoints.save_checkpoint(manager, step, state, force=True)
                            _record_map(run_meta, state, data, step, config)
                            _save_run_meta(workdir, config, run_meta)
                        manager.wait_until_finished()
                        logging.warning("preempted: checkpoint at step %d written; exiting", step)
                        raise checkpoints.Preempted(step)
        manager.wait_until_finished()
        if manager.latest_step() != total_steps:
            check_finite(pending, state, saved)
            checkpoints.save_checkpoint(manager, total_steps, state, force=True)
            manager.wait_until_finished()
        if str(total_steps) not in run_meta["module_to_relation"]:
            _record_map(run_meta, state, data, total_steps, config)
            _save_run_meta(workdir, config, run_meta)
    finally:
        if writer is not None:
            writer.close()
        manager.wait_until_finished()
    return TrainResult(setup, state, data, total_steps, time.time() - start)


def _put_batch(mesh, ids: np.ndarray, states, labels: np.ndarray, sizes: np.ndarray | None):
    """The :class:`~nri_modular.bouncegrad.Batch` of tasks ``ids``, task-sharded on the mesh,
    and its graph budget (None unless the systems have different ``sizes [N]``)."""
    (task_ids,) = distributed.put_batch(mesh, (ids,))
    states_arr, labels_arr = distributed.put_batch(mesh, (states, labels), rows=ids)
    if sizes is None:
        return bouncegrad.Batch(task_ids, states_arr, labels_arr), None
    batch_sizes = graph.Sizes.of(sizes[ids])
    (counts,) = distributed.put_batch(mesh, (batch_sizes.counts,))
    return bouncegrad.Batch(task_ids, states_arr, labels_arr, counts), batch_sizes.budget


def _record(window, window_start, step, steps_per_epoch, config) -> dict:
    """The metric record of a logged step: window means, step, epoch and throughput."""
    record = _host_metrics(window)
    elapsed = time.time() - window_start
    record.update(
        step=step,
        epoch=step / steps_per_epoch,
        tasks_per_second=len(window) * config.batch_size / max(elapsed, 1e-9),
        batch_size=config.batch_size,
    )
    return record


def finished_results(workdir: str, config: Config) -> dict | None:
    """The saved results of a finished run rerun with the same command, or None.

    A workdir whose ``results.json`` comes from a run of ``config``'s length, trained and
    meta-tested with the same settings (logging, layout and data location may differ), is
    done: its results are returned, nothing is retrained or rewritten. A longer run (a
    constant step size extended with ``--num_epochs``) moves the old results aside to
    ``results_step<k>.json`` and trains on.

    Raises:
      ValueError: the finished run's meta-test settings differ (rescoring a finished run is
        ``experiments/evaluate.py``'s job: it writes its own file and records its settings).
    """
    path = os.path.join(workdir, "results.json")
    config_path = os.path.join(workdir, "config.json")
    if not (os.path.exists(path) and os.path.exists(config_path)):
        return None
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    saved = checkpoints.read_config_json(workdir)
    total_steps = (config.num_train // config.batch_size) * config.num_epochs
    if results.get("train_steps") != total_steps:
        done, steps = results.get("train_steps"), checkpoints.checkpoint_steps(workdir)
        if isinstance(done, int) and steps and total_steps > done == steps[-1]:
            moved = os.path.join(workdir, f"results_step{done}.json")
            if distributed.is_primary():
                os.replace(path, moved)
            logging.info("the run is extended: its earlier results are kept in %s", moved)
        return None
    current = checkpoints.config_json(config)
    if (
        any(saved.get(k) != current[k] for k in (*checkpoints.training_fields(), "data_dir"))
        or checkpoints.config_from_json(saved).uses_proposal_network != config.uses_proposal_network
    ):
        return None  # other settings (refused, naming them) or data (checked) on resume
    meta_test = {
        k: (saved.get(k), current[k])
        for k in checkpoints.META_TEST_FIELDS
        if saved.get(k) != current[k]
    }
    if meta_test:
        raise ValueError(
            f"workdir {workdir!r} holds a finished run whose results.json was scored with "
            + ", ".join(f"{k}={a!r}" for k, (a, _) in meta_test.items())
            + " (now "
            + ", ".join(f"{k}={b!r}" for k, (_, b) in meta_test.items())
            + "); to score it with other settings run experiments/evaluate.py "
            f"--workdir={workdir} --data_dir={config.data_dir} with those flags (it writes its "
            "own file and records them)"
        )
    logging.info("workdir %s holds this finished run: its saved results (%s)", workdir, path)
    return results


def train_and_evaluate(config: Config, workdir: str) -> dict:
    """Meta-trains with BounceGrad, then meta-tests; returns the results dict.

    A rerun of a finished run returns its saved results (:func:`finished_results`). The
    workdir is locked for the whole run (:class:`~nri_modular.checkpoints.WorkdirLock`).

    Args:
      config: a validated :class:`Config`.
      workdir: output directory (created; its parent must exist).

    Returns:
      The dict written to ``<workdir>/results.json``.

    Raises:
      Preempted: on SIGTERM, after checkpointing (a ``SystemExit`` with code 0).
      CheckpointError: the latest checkpoint is damaged or of other shapes.
      NonFiniteResultError: a result is NaN or infinite (nothing is written).
    """
    distributed.initialize(config.coordinator_address, config.num_processes, config.process_id)
    with checkpoints.WorkdirLock(workdir) if workdir else contextlib.nullcontext():
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: Config, workdir: str) -> dict:
    wall_start = time.time()
    if workdir:
        done = finished_results(workdir, config)
        if done is not None:
            return done
    run = train(config, workdir)
    results = evaluate.meta_test(
        config,
        run.setup.bank,
        run.state,
        run.data.train.labels,
        run.data.test,
        run.setup.proposal_apply,
        mesh=run.setup.mesh,
        relations=run.data.relations,
    )
    results.update(
        num_train_tasks=config.num_train,
        train_steps=run.total_steps,
        train_seconds=run.seconds,
        wall_seconds=time.time() - wall_start,
    )
    path = os.path.join(workdir, "results.json")
    evaluate.check_finite_results(results, path)
    if distributed.is_primary():
        checkpoints.write_json_atomic(path, results)
    distributed.sync("results")
    return results

"""``train_and_evaluate(config, workdir)``: data -> BounceGrad meta-training -> meta-test.

The one place in the package that does I/O: it caches the dataset, writes
``<workdir>/metrics.jsonl`` (one JSON line per logged step), Orbax checkpoints in
``<workdir>/checkpoints`` (resumed from the latest one when rerun with the same workdir),
``<workdir>/config.json`` and finally ``<workdir>/results.json``.

Resumption is exact: the per-step key is ``fold_in(rng, step)`` and the task order of
epoch ``e`` depends only on ``(seed, e)``, so a run killed at any point and rerun ends
with the same result as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from nri_modular import bouncegrad, evaluate, proposal
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
    return ModuleBank(config.num_modules, config.edge_hidden, config.node_hidden)


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
    )


def load_data(config: Config):
    """Generates (once, cached in ``config.data_dir``) and loads the dataset."""
    return datasets.ensure_dataset(
        config.data_dir,
        config.system,
        num_train=config.num_train,
        num_valid=config.num_valid,
        num_test=config.num_test,
        seed=config.data_seed,
        num_particles=config.num_particles,
    )


def _config_json(config: Config) -> dict:
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def _check_workdir_config(workdir: str, config: Config) -> None:
    """Writes ``config.json``, or checks a resumed run's checkpoint shapes still fit."""
    path = os.path.join(workdir, "config.json")
    current = _config_json(config)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        diff = {k: (saved.get(k), current[k]) for k in _STATE_FIELDS if saved.get(k) != current[k]}
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


def checkpoint_manager(workdir: str, config: Config) -> ocp.CheckpointManager:
    """Orbax manager keeping the last ``keep_checkpoints`` checkpoints (atomic, async)."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
    )


def _host_metrics(metrics: list[dict]) -> dict:
    stacked = jax.device_get(metrics)
    out = {}
    for k in stacked[0]:
        vals = np.asarray([m[k] for m in stacked], np.float64)
        out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


def train_and_evaluate(config: Config, workdir: str) -> dict:
    """Meta-trains with BounceGrad, then meta-tests; returns the results dict.

    Args:
      config: a validated :class:`Config`.
      workdir: output directory (created; its parent must exist).

    Returns:
      The dict written to ``<workdir>/results.json``.
    """
    wall_start = time.time()
    if not workdir:
        raise ValueError("workdir must be given")
    parent = os.path.dirname(os.path.abspath(workdir))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"parent directory of workdir {workdir!r} does not exist: {parent}")
    os.makedirs(workdir, exist_ok=True)
    _check_workdir_config(workdir, config)

    data = load_data(config)
    train, test = data.train, data.test
    n = config.num_particles
    if train.states.shape[2] != n:
        raise ValueError(f"dataset has {train.states.shape[2]} particles, config says {n}")
    if test.states.shape[1] <= config.obs_frames + config.horizon:
        raise ValueError(
            f"test trajectories have {test.states.shape[1]} frames; need more than "
            f"obs_frames + horizon = {config.obs_frames + config.horizon}"
        )

    bank = build_bank(config)
    optimizer = optax.adam(config.learning_rate)
    bg_config = bouncegrad_config(config)
    proposal_params = proposal_apply = proposal_optimizer = None
    if config.uses_proposal_network:
        proposal_init, proposal_apply = proposal.make_proposal_network(
            config.num_modules, n, config.proposal_hidden
        )
        proposal_params = proposal_init(
            jax.random.PRNGKey(config.seed + 2), train.states[:1, : config.obs_frames]
        )
        proposal_optimizer = optax.adam(config.proposal_learning_rate)
        if train.states.shape[1] != config.obs_frames:
            raise ValueError(
                f"the proposal network reads {config.obs_frames} frames (obs_frames) but "
                f"training trajectories have {train.states.shape[1]}"
            )
    step_fn = jax.jit(
        bouncegrad.make_bouncegrad_step(
            bank, optimizer, bg_config, n, proposal_apply, proposal_optimizer
        ),
        donate_argnums=(0,),
    )
    state = bouncegrad.init_train_state(
        jax.random.PRNGKey(config.seed),
        bank,
        optimizer,
        config.num_train,
        n,
        initial_temperature=config.initial_temperature,
        proposal_params=proposal_params,
        proposal_optimizer=proposal_optimizer,
    )

    manager = checkpoint_manager(workdir, config)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    latest = manager.latest_step()
    if latest is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
        logging.info("resumed from checkpoint at step %d", latest)
        _truncate_metrics(metrics_path, latest)

    steps_per_epoch = config.num_train // config.batch_size
    total_steps = steps_per_epoch * config.num_epochs
    train_states = train.states
    train_labels = train.labels
    step = int(state.step)
    window, window_start = [], time.time()
    with open(metrics_path, "a", encoding="utf-8") as metrics_file:
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            order = datasets.task_batches(config.num_train, config.batch_size, config.seed, epoch)
            for ids in order[offset:]:
                batch = bouncegrad.Batch(
                    task_ids=jnp.asarray(ids),
                    states=jnp.asarray(train_states[ids]),
                    labels=jnp.asarray(train_labels[ids]),
                )
                state, metrics = step_fn(state, batch)
                window.append(metrics)
                step += 1
                if step % config.log_every == 0 or step == total_steps:
                    m = _host_metrics(window)
                    elapsed = time.time() - window_start
                    m.update(
                        step=step,
                        epoch=step / steps_per_epoch,
                        tasks_per_second=len(window) * config.batch_size / max(elapsed, 1e-9),
                    )
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
                    window, window_start = [], time.time()
                if step % config.checkpoint_every == 0 or step == total_steps:
                    manager.save(step, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    if manager.latest_step() != total_steps:
        manager.save(total_steps, args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()
    train_seconds = time.time() - wall_start

    results = meta_test(config, bank, state, train_labels, test, proposal_apply)
    results.update(
        num_train_tasks=config.num_train,
        train_steps=total_steps,
        train_seconds=train_seconds,
        wall_seconds=time.time() - wall_start,
    )
    with open(os.path.join(workdir, "results.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    os.replace(os.path.join(workdir, "results.json.tmp"), os.path.join(workdir, "results.json"))
    return results


def meta_test(
    config: Config, bank: ModuleBank, state, train_labels, test, proposal_apply=None
) -> dict:
    """Structure search on the test tasks' observed frames, then prediction and accuracy."""
    start = time.time()
    train_structures = np.asarray(state.structures)
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

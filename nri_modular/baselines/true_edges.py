"""The true graph: a module bank trained on the TRUE relations (module ``k`` = relation type ``k``).

The one trainer of a module bank on the true structures, used wherever a model of the
dynamics is needed without structure inference: the hidden-particle experiment
(:mod:`nri_modular.hidden_node_experiment`) and the structure-search benchmark
(``benchmarks/structure_search.py``), and as the "true graph" upper bound of the tables.

It is BounceGrad (:func:`nri_modular.bouncegrad.make_bouncegrad_step`) with no annealing
(``sa_steps=0``) and every task's structure fixed to its labels: plain gradient descent
on the ``p``-step rollout loss. Optionally the learned proposal network is trained in the
same compiled step, with those structures as its cross-entropy targets (supervised: it
learns to predict the true relations from the trajectories).

Batches are the training epochs of :func:`nri_modular.data.task_batches` (``seed``,
epoch), so the data order is that of a meta-training run with the same seed.

A run's :class:`~nri_modular.config.Config` gives every setting at once
(:func:`train_true_edges_from_config`): the bank, optimiser (step-size schedule included)
and step settings (loss, ``huber_delta``, edge layout) come from the library's builders
(:func:`nri_modular.config.build_bank`, :func:`~nri_modular.config.module_optimizer`,
:func:`~nri_modular.config.bouncegrad_config`), the ones :func:`nri_modular.train.build`
uses, so the modules are those of that run's trainer with the structures held at the
labels (``experiments/upper_bound.py``'s ``upper_bound`` arm, bit for bit on one device).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nri_modular import bouncegrad
from nri_modular import config as config_lib
from nri_modular.config import Config
from nri_modular.data import Split, task_batches
from nri_modular.modules import ModuleBank, Params


@dataclasses.dataclass(frozen=True)
class ProposalTraining:
    """The learned proposal network, trained alongside the modules (targets = true edges).

    Attributes:
      apply: ``(params, states [B, T, n, 4]) -> logits [B, n(n-1), K]``
        (:func:`nri_modular.proposal_net.make_proposal_network`).
      params: its initial parameters (initialised on states of the training split's shape).
      optimizer: its Optax optimiser.
    """

    apply: bouncegrad.ProposalApply
    params: Params
    optimizer: optax.GradientTransformation


def _check(bank: ModuleBank, train: Split, num_steps: int, batch_size: int) -> None:
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if not 0 < batch_size <= train.num_tasks:
        raise ValueError(f"batch_size must be in [1, {train.num_tasks}], got {batch_size}")


def _check_labels(bank: ModuleBank, train: Split) -> None:
    labels = np.asarray(train.labels)
    if labels.min() < 0 or labels.max() >= bank.num_modules:
        raise ValueError(
            f"true-edges training computes relation type k with module k: relation types "
            f"{int(labels.min())}..{int(labels.max())} need num_modules > {int(labels.max())}, "
            f"got {bank.num_modules}"
        )


# Signature: (state, batch) -> (state, metrics), jitted, the state's buffers donated
StepFn = Callable[[bouncegrad.TrainState, bouncegrad.Batch], tuple[bouncegrad.TrainState, dict]]


def true_edges_step(
    bank: ModuleBank,
    optimizer: optax.GradientTransformation,
    train: Split,
    *,
    seed: int,
    step_config: bouncegrad.BounceGradConfig,
    proposal: ProposalTraining | None = None,
) -> tuple[bouncegrad.TrainState, StepFn]:
    """The initial state and the step of true-edges training, for a loop of one's own.

    Args:
      bank, optimizer, train, seed, proposal: as in :func:`train_true_edges`.
      step_config: the step's settings (``p``, loss, edge layout); ``sa_steps`` is set
        to 0 (no annealing), and so no move is ever made: the move is set to
        ``"uniform"`` (a run's ``blocked_gibbs`` would otherwise ask for a proposal
        network that the step never reads).

    Returns:
      ``(state, step)``: the state from ``PRNGKey(seed)`` with every training task's
      structure its labels (int32 ``[S, n(n-1)]``), and the jitted BounceGrad step.
    """
    _check_labels(bank, train)
    n = train.num_particles
    state = bouncegrad.init_train_state(
        jax.random.PRNGKey(seed),
        bank,
        optimizer,
        train.num_tasks,
        n,
        proposal_params=None if proposal is None else proposal.params,
        proposal_optimizer=None if proposal is None else proposal.optimizer,
    )
    state = state.replace(structures=jnp.asarray(train.labels, jnp.int32))
    step = jax.jit(
        bouncegrad.make_bouncegrad_step(
            bank,
            optimizer,
            dataclasses.replace(step_config, sa_steps=0, proposal="uniform", uniform_mix=0.0),
            n,
            None if proposal is None else proposal.apply,
            None if proposal is None else proposal.optimizer,
        ),
        donate_argnums=0,
    )
    return state, step


def train_true_edges(
    bank: ModuleBank,
    optimizer: optax.GradientTransformation,
    train: Split,
    *,
    num_steps: int,
    batch_size: int,
    p: int,
    seed: int,
    proposal: ProposalTraining | None = None,
    log: Callable[[str], None] | None = None,
    log_every: int = 200,
    step_config: bouncegrad.BounceGradConfig | None = None,
) -> tuple[Params, Params]:
    """Trains ``bank`` on the training split with structure = labels.

    Args:
      bank: the module bank (``num_modules`` > the largest relation type).
      optimizer: Optax optimiser of the module parameters (schedules included).
      train: the training split (states ``[S, T, n, 4]``, labels int ``[S, n(n-1)]``).
      num_steps: optimiser steps; step ``i`` is batch ``i % (S // batch_size)`` of
        epoch ``i // (S // batch_size)``.
      batch_size: tasks per step.
      p: rollout length of the loss (truth re-fed every ``p`` frames).
      seed: initial parameters (``PRNGKey(seed)``) and the data order.
      proposal: also train the learned proposal network (see :class:`ProposalTraining`).
      log: called with a progress line every ``log_every`` steps and at the last step
        (mean loss over those steps, proposal cross-entropy when trained, seconds).
      step_config: the step's other settings (loss, edge layout; default
        ``BounceGradConfig()``'s); its ``p`` is replaced by ``p``.

    Returns:
      ``(params, proposal_params)``: the trained module parameters and the trained proposal
      parameters (``None`` without ``proposal``), as device arrays.
    """
    _check(bank, train, num_steps, batch_size)
    state, step_fn = true_edges_step(
        bank,
        optimizer,
        train,
        seed=seed,
        step_config=dataclasses.replace(step_config or bouncegrad.BounceGradConfig(), p=p),
        proposal=proposal,
    )
    per_epoch = train.num_tasks // batch_size
    start, window, epoch_batches = time.perf_counter(), [], None
    for step in range(num_steps):
        epoch, offset = divmod(step, per_epoch)
        if offset == 0:
            epoch_batches = task_batches(train.num_tasks, batch_size, seed, epoch)
        ids = epoch_batches[offset]
        batch = bouncegrad.Batch(
            jnp.asarray(ids), jnp.asarray(train.states[ids]), jnp.asarray(train.labels[ids])
        )
        state, metrics = step_fn(state, batch)
        window.append(metrics)
        if log is not None and ((step + 1) % log_every == 0 or step + 1 == num_steps):
            m = jax.device_get(window)
            line = f"train step {step + 1}/{num_steps} | loss {np.mean([x['loss'] for x in m]):.3e}"
            if proposal is not None:
                line += f" | proposal xent {np.mean([x['proposal_loss'] for x in m]):.4f}"
            log(f"{line} | {time.perf_counter() - start:.0f} s")
            window = []
        elif log is None:
            window = []
    return state.params, state.proposal_params


def train_true_edges_from_config(
    config: Config,
    train: Split,
    *,
    proposal: ProposalTraining | None = None,
    num_steps: int | None = None,
    log: Callable[[str], None] | None = None,
    log_every: int | None = None,
) -> tuple[Params, Params]:
    """:func:`train_true_edges` with every setting from a run's config.

    The bank (:func:`nri_modular.config.build_bank`), the module optimiser with its
    step-size schedule (:func:`~nri_modular.config.module_optimizer`: constant, or a
    cosine decay to ``final_learning_rate`` over the run's steps) and the step settings
    (:func:`~nri_modular.config.bouncegrad_config`: ``p``, ``loss`` and ``huber_delta``,
    ``block_rows``, ``edge_compute``, ``task_shards``) are the ones
    :func:`nri_modular.train.build` gives the run; ``batch_size`` and ``seed`` are the
    config's.

    Args:
      config: the run's config (``num_train`` is the training split's size: the
        schedule spans ``num_epochs * (num_train // batch_size)`` steps).
      train: the training split.
      proposal: also train the learned proposal network (see :class:`ProposalTraining`).
      num_steps: optimiser steps (default: the run's, ``num_epochs * (num_train //
        batch_size)``).
      log, log_every: as in :func:`train_true_edges` (default ``config.log_every``).

    Returns:
      ``(params, proposal_params)`` as :func:`train_true_edges` returns them; the
      parameters are those of ``build_bank(config)``.
    """
    if train.num_tasks != config.num_train:
        raise ValueError(
            f"the training split has {train.num_tasks} tasks, num_train is {config.num_train}"
        )
    run_steps = config.num_epochs * (config.num_train // config.batch_size)
    return train_true_edges(
        config_lib.build_bank(config),
        config_lib.module_optimizer(config),
        train,
        num_steps=run_steps if num_steps is None else num_steps,
        batch_size=config.batch_size,
        p=config.p,
        seed=config.seed,
        proposal=proposal,
        log=log,
        log_every=config.log_every if log_every is None else log_every,
        step_config=config_lib.bouncegrad_config(config),
    )

"""BounceGrad: simulated annealing on structures, then a gradient step on the modules.

One compiled :func:`make_bouncegrad_step` step on a batch of training tasks:

1. simulated annealing (weights fixed) on the batch's persistent structures;
2. one Optax step on the module parameters with the accepted structures (the per-task
   losses of this pass become the stored energies);
3. optionally, one Optax step on the learned proposal network with the current structures
   as cross-entropy targets (the paper's "learning to optimise" from the inner loop);
4. adaptation of the temperature toward a decaying target rate of accepted worse moves.

Structures and energies of all training tasks live in the :class:`TrainState` and persist
across epochs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from nri_modular import annealing, gnn, proposal_net, structure_priors
from nri_modular import graph as graph_lib
from nri_modular import structure as structure_lib
from nri_modular.modules import ModuleBank, Params


@dataclasses.dataclass(frozen=True)
class BounceGradConfig:
    """Static settings of the BounceGrad step.

    Attributes:
      p: rollout length of the loss (truth re-fed every ``p`` frames).
      sa_steps: annealing proposals per task per step.
      refresh_energy: re-evaluate the current structures with the current weights before
        annealing (exact Metropolis); if False, compare against the energy stored at the
        task's previous visit (stale, cheaper: one forward pass fewer per step).
      temperature_decay_steps: ``target = exp(-1 - 5 * step / temperature_decay_steps)``.
      temperature_factor: multiplicative temperature adaptation factor.
      proposal: ``"uniform"``, ``"blocked_gibbs"`` (needs a proposal network),
        ``"exact_local"`` or ``"exact_sweep"`` (see :mod:`nri_modular.structure`).
      uniform_mix: probability of a uniform move when ``proposal="blocked_gibbs"``.
      exact_stride: exact moves score every ``exact_stride``-th transition.
      block_rows, edge_compute: see :mod:`nri_modular.gnn`.
      loss, huber_delta: the training loss per predicted coordinate (also the annealing
        energy of training): ``"mse"`` (squared error, the paper's) or ``"huber"``
        (:func:`huber_rollout_loss`: rare large errors, such as close encounters of
        charged particles, weigh less). Exact moves score settings by the one-step version
        of the same penalty.
      task_shards: ``V`` virtual shards of the training tasks (see
        :func:`nri_modular.data.batching.task_batches`): slice ``v`` of every batch holds
        only tasks of block ``v`` of ``TrainState.structures``, so the step reads and
        writes each task's structure and energy within its block (:func:`gather_tasks`),
        which stays on the device holding that block when the data-axis size divides ``V``;
        the blocked edge layouts are per slice too (``gnn.rollout``'s ``groups``).
      anneal_frames: the paper's per-task split of frames (its section 3: annealing on a
        task's "train split", the gradient step on its "test split"): ``A > 0`` anneals
        (energies and exact-move scores) on each task's first ``A`` frames and takes the
        gradient on the frames after them; each part must hold more than ``p`` frames.
        ``0`` (default): both use every frame. The paper states no fraction.
      symmetric_structure, node_types: structure priors (moves of
        :func:`nri_modular.structure_priors.make_search_move`; off by default).
    """

    p: int = 10
    sa_steps: int = 1
    refresh_energy: bool = True
    temperature_decay_steps: float = 800.0
    temperature_factor: float = 1.1
    proposal: str = "uniform"
    uniform_mix: float = 0.0
    exact_stride: int = 1
    block_rows: int = 512
    edge_compute: str = "blocked"
    task_shards: int = 1
    loss: str = "mse"
    huber_delta: float = 0.01
    anneal_frames: int = 0
    symmetric_structure: bool = False
    node_types: int = 0


LOSS_KINDS = ("mse", "huber")
# The paper's code starts annealing at exp(-9.8) = 5.545e-5; every run of ours used this
# rounded value (Config's default, which derives from it).
INITIAL_TEMPERATURE = 5.5e-5


def huber_rollout_loss(
    bank: ModuleBank,
    params: Params,
    states: jax.Array,
    structure: jax.Array,
    p: int,
    delta: float,
    **rollout_kwargs,
) -> jax.Array:
    """Per-task Huber error of ``p``-step rollouts (``gnn.rollout_loss`` with another penalty).

    Each coordinate's error ``e`` costs ``e**2`` if ``|e| <= delta``, else
    ``2 * delta * |e| - delta**2`` (:func:`nri_modular.gnn.penalty`).

    Args:
      states: ``[B, T, n, state_dim]``; structure: int32 ``[B, n(n-1)]``.
      delta: positive, in normalised units.
      rollout_kwargs: ``block_rows``, ``edge_compute``, ``groups`` of ``gnn.rollout_predictions``.

    Returns:
      ``[B]`` mean over predicted frames, particles and state dims.
    """
    return gnn.rollout_loss(bank, params, states, structure, p, huber_delta=delta, **rollout_kwargs)


def split_frames(states: jax.Array, anneal_frames: int, p: int) -> tuple[jax.Array, jax.Array]:
    """A batch's frames for annealing and for the gradient step
    (``BounceGradConfig.anneal_frames``).

    Args:
      states: ``[B, T, n, S]``.
      anneal_frames: ``A``; 0: every frame for both.
      p: rollout length: each part needs more than ``p`` frames.

    Returns:
      ``(states[:, :A], states[:, A:])``, or ``(states, states)`` for ``A = 0``.
    """
    if not anneal_frames:
        return states, states
    t = states.shape[1]
    if not (p < anneal_frames and p < t - anneal_frames):
        raise ValueError(
            f"anneal_frames={anneal_frames} splits {t} frames into {anneal_frames} + "
            f"{t - anneal_frames}; each part needs more than p={p} frames"
        )
    return states[:, :anneal_frames], states[:, anneal_frames:]


def loss_delta(loss: str, huber_delta: float) -> float | None:
    """The ``huber_delta`` argument of the ``gnn`` losses for a run's ``loss`` kind."""
    if loss not in LOSS_KINDS:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSS_KINDS}")
    if not huber_delta > 0:
        raise ValueError(f"huber_delta must be positive, got {huber_delta}")
    return huber_delta if loss == "huber" else None


def gather_tasks(table: jax.Array, task_ids: jax.Array, shards: int = 1) -> jax.Array:
    """``table[task_ids]``, block-local for ``shards > 1``.

    Args:
      table: ``[N, ...]`` per-task values (structures or energies).
      task_ids: int32 ``[B]``; with ``shards = V > 1``, slice ``v`` of ``B / V`` ids must lie
        in block ``v`` of ``N / V`` rows (as :func:`~nri_modular.data.batching.task_batches`
        makes them; :func:`~nri_modular.data.batching.check_block_local` checks a batch on
        the host). Inside jit an id outside its block is clamped, i.e. reads a wrong row.
        Written as a gather batched over the ``V`` blocks, so a task-sharded ``table``
        needs no communication when the data-axis size divides ``V``.

    Returns:
      ``[B, ...]``.
    """
    if shards == 1:
        return table[task_ids]
    blocks, local = _block_view(table, task_ids, shards)
    out = jax.vmap(lambda t, i: t[i])(blocks, local)
    return out.reshape(task_ids.shape[0], *table.shape[1:])


def scatter_tasks(
    table: jax.Array, task_ids: jax.Array, values: jax.Array, shards: int = 1
) -> jax.Array:
    """``table.at[task_ids].set(values)``, block-local as :func:`gather_tasks`."""
    if shards == 1:
        return table.at[task_ids].set(values)
    blocks, local = _block_view(table, task_ids, shards)
    vals = values.reshape(shards, -1, *values.shape[1:])
    out = jax.vmap(lambda t, i, v: t.at[i].set(v))(blocks, local, vals)
    return out.reshape(table.shape)


def _block_view(table, task_ids, shards):
    """``table`` as ``[V, N/V, ...]`` blocks and ``task_ids`` as ``[V, B/V]`` in-block rows."""
    n, b = table.shape[0], task_ids.shape[0]
    if n % shards or b % shards:
        raise ValueError(f"task_shards={shards} must divide the {n} tasks and the batch of {b}")
    size = n // shards
    blocks = table.reshape(shards, size, *table.shape[1:])
    local = task_ids.reshape(shards, b // shards) - (jnp.arange(shards) * size)[:, None]
    return blocks, local


@flax.struct.dataclass
class TrainState:
    """Everything BounceGrad needs to continue exactly.

    Attributes:
      params: module bank parameters.
      opt_state: Optax state of ``params``.
      structures: int32 ``[num_train_tasks, E]`` current structure of every training task.
      energies: ``[num_train_tasks]`` energy at the task's last visit (``inf`` = never).
      temperature: scalar annealing temperature.
      step: int32 scalar, number of BounceGrad steps done.
      rng: PRNG key (per-step keys are ``fold_in(rng, step)``).
      proposal_params, proposal_opt_state: learned proposal network (``None`` if unused).
    """

    params: Params
    opt_state: Any
    structures: jax.Array
    energies: jax.Array
    temperature: jax.Array
    step: jax.Array
    rng: jax.Array
    proposal_params: Params = None
    proposal_opt_state: Any = None


@flax.struct.dataclass
class Batch:
    """A batch of training tasks.

    Attributes:
      task_ids: int32 ``[B]`` indices into ``TrainState.structures``.
      states: ``[B, T, n, 4]`` trajectories.
      labels: int32 ``[B, E]`` true relation types; the step never reads them (training
        edge accuracy is scored on the host, over all training tasks with one map:
        :func:`nri_modular.train.training_structure_accuracy`).
      sizes: int32 ``[B]`` objects of each task when systems of different sizes share the
        dataset (padded to ``n``; the step then takes the batch's static
        :class:`~nri_modular.graph.GraphBudget`); None: every task has ``n``.
    """

    task_ids: jax.Array
    states: jax.Array
    labels: jax.Array
    sizes: jax.Array | None = None


def check_sizes(counts, budget, config: BounceGradConfig):
    """The :class:`~nri_modular.graph.Sizes` of a batch (None for systems of one size).

    Raises:
      ValueError: sizes without a budget (or a budget without sizes), or a setting that
        does not handle systems of different sizes yet (task shards, the learned
        proposal's blocked Gibbs moves, node types).
    """
    if counts is None:
        if budget is not None:
            raise ValueError("a graph budget was given for a batch without sizes")
        return None
    if budget is None:
        raise ValueError("a batch of systems of different sizes needs its graph budget")
    used = unsupported_with_sizes(config)
    if used:
        raise ValueError(f"systems of different sizes do not support {', '.join(used)} yet")
    return graph_lib.Sizes(counts, budget)


def unsupported_with_sizes(config: BounceGradConfig) -> list[str]:
    """The settings of ``config`` that do not handle systems of different sizes yet, as
    flags (``--task_shards > 1``, ``--proposal=blocked_gibbs``, ``--node_types``)."""
    unsupported = {
        "--task_shards > 1": config.task_shards > 1,
        "--proposal=blocked_gibbs": config.proposal == "blocked_gibbs",
        "--node_types": config.node_types > 0,
    }
    return [flag for flag, on in unsupported.items() if on]


def init_train_state(
    key: jax.Array,
    bank: ModuleBank,
    optimizer: optax.GradientTransformation,
    num_tasks: int,
    num_nodes: int,
    initial_temperature: float = INITIAL_TEMPERATURE,
    proposal_params: Params = None,
    proposal_optimizer: optax.GradientTransformation | None = None,
    symmetric_structure: bool = False,
    node_types: int = 0,
) -> TrainState:
    """Fresh state: random modules, random structures (under the structure prior, if any),
    unknown (``inf``) energies."""
    k_params, k_struct, k_rng = jax.random.split(key, 3)
    params = bank.init(k_params)
    structures = structure_priors.random_prior_structures(
        k_struct, num_tasks, num_nodes, bank.num_modules, symmetric_structure, node_types
    )
    proposal_opt_state = None
    if proposal_params is not None:
        if proposal_optimizer is None:
            raise ValueError("proposal_params given without a proposal_optimizer")
        proposal_opt_state = proposal_optimizer.init(proposal_params)
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        structures=structures,
        energies=jnp.full((num_tasks,), jnp.inf, jnp.float32),
        temperature=jnp.asarray(initial_temperature, jnp.float32),
        step=jnp.zeros((), jnp.int32),
        rng=k_rng,
        proposal_params=proposal_params,
        proposal_opt_state=proposal_opt_state,
    )


# Signature: (proposal_params, states [B, T, n, 4]) -> logits [B, E, K]
ProposalApply = Callable[[Params, jax.Array], jax.Array]


def make_bouncegrad_step(
    bank: ModuleBank,
    optimizer: optax.GradientTransformation,
    config: BounceGradConfig,
    num_nodes: int,
    proposal_apply: ProposalApply | None = None,
    proposal_optimizer: optax.GradientTransformation | None = None,
):
    """Builds ``bouncegrad_step(state, batch, budget=None) -> (state, metrics)`` (not jitted).

    The returned function is pure; jit it (optionally with shardings, donation) with
    ``budget`` static: batches of systems of different sizes (``batch.sizes``) pass their
    :func:`nri_modular.graph.graph_budget`, one compiled program per bucket.
    """
    proposal_fn = structure_priors.make_search_move(
        config.proposal,
        bank.num_modules,
        num_nodes,
        config.uniform_mix,
        config.symmetric_structure,
        config.node_types,
    )
    if config.proposal == "blocked_gibbs" and proposal_apply is None:
        raise ValueError(f"proposal {config.proposal!r} needs a proposal network")
    configs = None
    if config.proposal in structure_lib.EXACT_KINDS:
        configs = jnp.asarray(structure_lib.incoming_configs(num_nodes, bank.num_modules))
    if config.sa_steps < 0:
        raise ValueError(f"sa_steps must be >= 0, got {config.sa_steps}")

    delta = loss_delta(config.loss, config.huber_delta)
    layout = dict(
        block_rows=config.block_rows, edge_compute=config.edge_compute, groups=config.task_shards
    )

    def step(state: TrainState, batch: Batch, budget: graph_lib.GraphBudget | None = None):
        sizes = check_sizes(batch.sizes, budget, config)

        def loss_fn(params, states, structure):
            return gnn.rollout_loss(
                bank, params, states, structure, config.p, huber_delta=delta, sizes=sizes, **layout
            )

        key = jax.random.fold_in(state.rng, state.step)
        k_anneal, _ = jax.random.split(key)
        shards = config.task_shards
        anneal_states, grad_states = split_frames(batch.states, config.anneal_frames, config.p)
        structure = gather_tasks(state.structures, batch.task_ids, shards)
        energy = gather_tasks(state.energies, batch.task_ids, shards)
        if config.refresh_energy:
            energy = loss_fn(state.params, anneal_states, structure)

        aux = None
        if config.sa_steps == 0:
            pass
        elif config.proposal == "blocked_gibbs":
            aux = proposal_apply(state.proposal_params, batch.states)
        elif config.proposal in structure_lib.EXACT_KINDS:
            aux = gnn.incoming_config_losses(
                bank,
                state.params,
                anneal_states,
                configs,
                config.exact_stride,
                groups=config.task_shards,
                huber_delta=delta,
                sizes=sizes,
            )

        # 1. Simulated annealing on the structures, weights fixed.
        sa_state = annealing.AnnealState(structure, energy, k_anneal, state.temperature)
        if config.sa_steps > 0:
            sa_state, diag = annealing.anneal(
                sa_state,
                lambda s: loss_fn(state.params, anneal_states, s),
                proposal_fn,
                jnp.full((config.sa_steps,), state.temperature),
                aux,
            )
            worse_accept = jnp.nanmean(diag.worse_accept_rate)
            accept = diag.accept_rate.mean()
        else:
            worse_accept = accept = jnp.asarray(jnp.nan, jnp.float32)
        structure = sa_state.structure

        # 2. One gradient step on the modules with the accepted structures.
        def mean_loss(params):
            per_task = loss_fn(params, grad_states, structure)
            return per_task.mean(), per_task

        (loss, per_task), grads = jax.value_and_grad(mean_loss, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        # 3. One step on the proposal network, targets = current structures.
        proposal_params, proposal_opt_state = state.proposal_params, state.proposal_opt_state
        proposal_loss = jnp.asarray(jnp.nan, jnp.float32)
        if proposal_apply is not None and proposal_optimizer is not None:

            def xent(pp):
                return proposal_net.proposal_loss(proposal_apply, pp, batch.states, structure)

            proposal_loss, pgrads = jax.value_and_grad(xent)(proposal_params)
            pupdates, proposal_opt_state = proposal_optimizer.update(
                pgrads, proposal_opt_state, proposal_params
            )
            proposal_params = optax.apply_updates(proposal_params, pupdates)

        # 4. Temperature toward the decaying target rate of accepted worse moves.
        target = annealing.target_worse_acceptance(state.step, config.temperature_decay_steps)
        temperature = annealing.adapt_temperature(
            state.temperature, worse_accept, target, config.temperature_factor
        )

        new_state = state.replace(
            params=params,
            opt_state=opt_state,
            structures=scatter_tasks(state.structures, batch.task_ids, structure, shards),
            # The annealing energy of the kept structure (pre-update weights): on a split,
            # the annealing frames' (the gradient frames' loss is another quantity).
            energies=scatter_tasks(
                state.energies,
                batch.task_ids,
                (sa_state.energy if config.anneal_frames else per_task).astype(jnp.float32),
                shards,
            ),
            temperature=temperature,
            step=state.step + 1,
            proposal_params=proposal_params,
            proposal_opt_state=proposal_opt_state,
        )
        metrics = {
            "loss": loss,
            "accept_rate": accept,
            "worse_accept_rate": worse_accept,
            "target_worse_rate": target,
            "temperature": state.temperature,
            "grad_norm": optax.tree.norm(grads),
            "proposal_loss": proposal_loss,
        }
        return new_state, metrics

    return step

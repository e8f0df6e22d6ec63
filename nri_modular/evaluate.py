"""Meta-test: structure search on observed frames, k-step prediction MSE, edge accuracy.

Protocol (Kipf et al. 2018, and the paper's Tables 1-2):

* each test task's structure is searched on its first ``obs_frames`` (49) frames with the
  module weights fixed (batched simulated annealing);
* the model is rolled out from frame ``obs_frames`` for ``horizon`` steps without
  re-feeding truth; the MSE (normalised units, averaged over tasks, particles and the 4
  state dims) is reported per step;
* edge accuracy maps modules to relation types once, on the training tasks (best
  one-to-one map, :func:`nri_modular.structure.best_mapping`), then scores test tasks.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nri_modular import annealing, gnn
from nri_modular import structure as structure_lib
from nri_modular.data import datasets
from nri_modular.modules import ModuleBank, Params


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Meta-test structure search settings.

    Attributes:
      num_steps: annealing steps per task.
      t_start, t_end: geometric temperature schedule.
      p: rollout length of the energy (as in training).
      batch_size: tasks annealed together (static shape; the last batch is padded).
      proposal, uniform_mix: see :func:`nri_modular.structure.make_move`. Search
        starts from the exact one-step optimum (exact kinds), else from the proposal
        network's argmax when a network is given, else from a random structure.
    """

    num_steps: int = 200
    t_start: float = 1e-5
    t_end: float = 1e-8
    p: int = 10
    batch_size: int = 250
    proposal: str = "uniform"
    uniform_mix: float = 0.0
    exact_stride: int = 1
    block_rows: int = 512
    edge_compute: str = "blocked"
    groups: int = 1


def _padded_batches(num: int, batch_size: int):
    """Yields ``(indices [batch_size], valid)`` from :func:`datasets.eval_batches`: every
    task once, in order; only the first ``valid`` entries of a batch are real tasks."""
    indices, mask = datasets.eval_batches(num, batch_size)
    for idx, valid in zip(indices, mask.sum(axis=1), strict=True):
        yield idx, int(valid)


@functools.partial(jax.jit, static_argnames=("bank", "config", "num_nodes", "proposal_apply"))
def _search_batch(bank, params, states, key, config, num_nodes, proposal_params, proposal_apply):
    proposal_fn = structure_lib.make_move(
        config.proposal, bank.num_modules, num_nodes, config.uniform_mix
    )

    def energy_fn(s):
        return gnn.rollout_loss(
            bank,
            params,
            states,
            s,
            config.p,
            block_rows=config.block_rows,
            edge_compute=config.edge_compute,
            groups=config.groups,
        )

    k_init, k_anneal = jax.random.split(key)
    logits = None
    if config.proposal in structure_lib.EXACT_KINDS:
        configs = jnp.asarray(structure_lib.incoming_configs(num_nodes, bank.num_modules))
        logits = gnn.incoming_config_losses(
            bank, params, states, configs, config.exact_stride, groups=config.groups
        )
        init = structure_lib.exact_best_structure(logits, num_nodes, bank.num_modules)
    elif proposal_apply is not None:
        logits = proposal_apply(proposal_params, states)
        init = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        init = structure_lib.random_structures(k_init, states.shape[0], num_nodes, bank.num_modules)
    state = annealing.AnnealState(init, energy_fn(init), k_anneal, jnp.float32(config.t_start))
    temps = annealing.geometric_temperatures(config.t_start, config.t_end, config.num_steps)
    state, diag = annealing.anneal(state, energy_fn, proposal_fn, temps, logits)
    return state.structure, state.energy, diag


def search_structures(
    bank: ModuleBank,
    params: Params,
    states: np.ndarray,
    key: jax.Array,
    config: SearchConfig,
    proposal_params: Params = None,
    proposal_apply: Callable | None = None,
    progress: Callable[[int, int], None] | None = None,
    put: Callable[[np.ndarray], jax.Array] = jnp.asarray,
    fetch: Callable[[jax.Array], np.ndarray] = np.asarray,
):
    """Anneals a structure for every task, weights fixed.

    Args:
      states: ``[N, T_obs, n, 4]`` observed frames of each task.
      key: PRNG key; batch ``i`` uses ``fold_in(key, i)``.
      proposal_params, proposal_apply: learned proposal (initialises from its argmax).
      progress: called as ``progress(tasks_done, N)``.
      put, fetch: host batch -> device array and back (defaults: one device; a sharded
        run passes :mod:`nri_modular.distributed` placements).

    Returns:
      ``(structures int32 [N, E], energies [N])`` as numpy.
    """
    n_tasks, _, n, _ = states.shape
    structures, energies = [], []
    for i, (idx, valid) in enumerate(_padded_batches(n_tasks, config.batch_size)):
        s, e, _ = _search_batch(
            bank,
            params,
            put(states[idx]),
            jax.random.fold_in(key, i),
            config,
            n,
            proposal_params,
            proposal_apply,
        )
        structures.append(fetch(s)[:valid])
        energies.append(fetch(e)[:valid])
        if progress is not None:
            progress(min((i + 1) * config.batch_size, n_tasks), n_tasks)
    return np.concatenate(structures), np.concatenate(energies)


@functools.partial(
    jax.jit, static_argnames=("bank", "horizon", "block_rows", "edge_compute", "groups")
)
def _rollout_sq_error(
    bank, params, states, structure, start, horizon, block_rows, edge_compute, groups
):
    preds = gnn.rollout(
        bank,
        params,
        jax.lax.dynamic_index_in_dim(states, start, axis=1, keepdims=False),
        structure,
        horizon,
        block_rows=block_rows,
        edge_compute=edge_compute,
        groups=groups,
    )
    truth = jax.lax.dynamic_slice_in_dim(states, start + 1, horizon, axis=1)
    return jnp.square(preds - truth).mean(axis=(2, 3))  # [B, horizon]


def prediction_mse(
    bank: ModuleBank,
    params: Params,
    states: np.ndarray,
    structures: np.ndarray,
    start_frame: int = 49,
    horizon: int = 20,
    batch_size: int = 250,
    block_rows: int = 512,
    edge_compute: str = "blocked",
    put: Callable[[np.ndarray], jax.Array] = jnp.asarray,
    fetch: Callable[[jax.Array], np.ndarray] = np.asarray,
    groups: int = 1,
) -> np.ndarray:
    """MSE of open-loop rollouts from ``start_frame``, per step.

    Args:
      states: ``[N, T, n, 4]`` with ``T > start_frame + horizon``.
      structures: int32 ``[N, E]``.
      groups: edge layouts per ``groups`` slices of a batch (see ``gnn.rollout``).
      put, fetch: as in :func:`search_structures`.

    Returns:
      ``[horizon]``: entry ``k - 1`` is the MSE of the ``k``-step prediction.
    """
    n_tasks, t = states.shape[:2]
    if start_frame + horizon >= t:
        raise ValueError(
            f"need more than start_frame + horizon = {start_frame + horizon} frames, got {t}"
        )
    if structures.shape[0] != n_tasks:
        raise ValueError(f"{structures.shape[0]} structures for {n_tasks} tasks")
    total = np.zeros(horizon)
    for idx, valid in _padded_batches(n_tasks, batch_size):
        err = _rollout_sq_error(
            bank,
            params,
            put(states[idx]),
            put(structures[idx]),
            start_frame,
            horizon,
            block_rows,
            edge_compute,
            groups,
        )
        total += fetch(err)[:valid].sum(0)
    return total / n_tasks


def module_mapping(structures: np.ndarray, labels: np.ndarray, num_modules: int, num_types: int):
    """Best module -> relation type map on (training) tasks; int32 ``[K]``."""
    counts = structure_lib.confusion(
        jnp.asarray(structures), jnp.asarray(labels), num_modules, num_types
    )
    return np.asarray(structure_lib.best_mapping(counts))


def edge_accuracy(structures: np.ndarray, labels: np.ndarray, mapping: np.ndarray) -> float:
    """Fraction of directed edges whose mapped module equals the true relation type."""
    if structures.shape != labels.shape:
        raise ValueError(f"structures {structures.shape} and labels {labels.shape} differ")
    return float((np.asarray(mapping)[structures] == labels).mean())

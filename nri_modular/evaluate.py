"""Meta-test: structure search on observed frames, then k-step prediction and its scores.

Protocol (Kipf et al. 2018, and the paper's Tables 1-2):

* each test task's structure is searched on its first ``obs_frames`` (49) frames with the
  module weights fixed (batched simulated annealing);
* the model is rolled out from frame ``obs_frames`` for ``horizon`` steps without
  re-feeding truth; the MSE (normalised units, averaged over tasks, particles and the 4
  state dims) is reported per step;
* edge accuracy maps modules to relation types once, on the training tasks (best
  one-to-one map, :func:`nri_modular.metrics.module_mapping`), then scores test tasks.

:func:`meta_test` runs the protocol for a trained :class:`~nri_modular.bouncegrad.TrainState`
(on the device mesh when given one) and returns the results a run writes to
``results.json``; the scores themselves are in :mod:`nri_modular.metrics`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nri_modular import annealing, bouncegrad, distributed, gnn, metrics, structure_priors
from nri_modular import graph as graph_lib
from nri_modular import structure as structure_lib
from nri_modular.config import Config
from nri_modular.data import batching, datasets
from nri_modular.data.normalization import Normalization
from nri_modular.modules import ModuleBank, Params
from nri_modular.search_config import SearchConfig  # noqa: F401 (evaluate.SearchConfig)


def search_config(config: Config) -> SearchConfig:
    """The meta-test structure-search settings of a run."""
    return SearchConfig(
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
        symmetric_structure=config.symmetric_structure,
        node_types=config.node_types,
        huber_delta=bouncegrad.loss_delta(config.loss, config.huber_delta),
    )


def exact_scores(
    bank: ModuleBank,
    params: Params,
    states: jax.Array,
    config: SearchConfig,
    sizes: graph_lib.Sizes | None = None,
):
    """Exact local moves' scores and the exact one-step optimum search starts from.

    Args:
      states: ``[B, T, n, 4]`` observed frames.
      config: its ``exact_stride``, ``groups`` and ``huber_delta`` (the energy's penalty).
      sizes: objects per task for systems of different sizes (None: all ``n``).

    Returns:
      ``(scores [B, n, K^(n-1)], structure int32 [B, n(n-1)])``: every setting's one-step
      penalty per node (:func:`nri_modular.gnn.incoming_config_losses`) and its argmin.
    """
    n = states.shape[2]
    configs = jnp.asarray(structure_lib.incoming_configs(n, bank.num_modules))
    scores = gnn.incoming_config_losses(
        bank,
        params,
        states,
        configs,
        config.exact_stride,
        groups=config.groups,
        huber_delta=config.huber_delta,
        sizes=sizes,
    )
    return scores, structure_lib.exact_best_structure(scores, n, bank.num_modules)


@functools.partial(jax.jit, static_argnames=("bank", "config"))
def _exact_scores_batch(bank, params, states, config, sizes):
    return exact_scores(bank, params, states, config, sizes)[0]


def batch_sizes(sizes: np.ndarray | None, idx: np.ndarray, put=jnp.asarray):
    """The :class:`~nri_modular.graph.Sizes` of tasks ``idx`` (None for systems of one size)."""
    if sizes is None:
        return None
    host = graph_lib.Sizes.of(np.asarray(sizes)[idx])
    return host.replace(counts=put(host.counts))


def edge_penalties(
    bank: ModuleBank,
    params: Params,
    states: np.ndarray,
    structures: np.ndarray,
    config: SearchConfig,
    put: Callable[[np.ndarray], jax.Array] = jnp.asarray,
    fetch: Callable[[jax.Array], np.ndarray] = np.asarray,
    sizes: np.ndarray | None = None,
) -> np.ndarray:
    """Each edge's one-step penalty under each module at the searched structures.

    The per-edge evidence of a search: for edge ``j -> i``, the one-step penalty of node
    ``i``'s incoming edges (:func:`exact_scores`, the search's energy penalty) with that edge
    given module ``m`` and the others as found (:func:`nri_modular.structure.edge_module_scores`).

    Args:
      states: ``[N, T_obs, n, 4]`` observed frames; ``structures`` int ``[N, E]``.
      sizes: int ``[N]`` objects per task (None: all ``n``).

    Returns:
      ``[N, E, K]`` float32 (edges touching padded objects: meaningless, mask them).
    """
    n_tasks, _, n, _ = states.shape
    out = []
    for idx, valid in batching.padded_batches(n_tasks, config.batch_size):
        z = batch_sizes(sizes, idx, put)
        scores = fetch(_exact_scores_batch(bank, params, put(states[idx]), config, z))[:valid]
        out.append(
            structure_lib.edge_module_scores(scores, structures[idx[:valid]], n, bank.num_modules)
        )
    return np.concatenate(out).astype(np.float32)


def edge_evidence(penalties: np.ndarray, mapping, relation: int) -> np.ndarray:
    """How much better an edge's best module of ``relation`` explains the data than its best
    module of any other relation: ``[N, E]`` (penalty gap; > 0 favours ``relation``).

    Args:
      penalties: ``[N, E, K]`` (:func:`edge_penalties`); ``mapping`` int ``[K]``.

    Returns:
      ``[N, E]``, or None when every module maps to one side (no gap exists).
    """
    mapping = np.asarray(mapping)
    mine, others = mapping == relation, mapping != relation
    if not mine.any() or not others.any():
        return None
    return penalties[..., others].min(-1) - penalties[..., mine].min(-1)


def search_energy(
    bank: ModuleBank,
    params: Params,
    states,
    config: SearchConfig,
    sizes: graph_lib.Sizes | None = None,
) -> Callable:
    """``structure [B, E] -> [B]``: meta-test's annealing energy, the ``p``-step rollout
    penalty of ``config`` (the run's loss, :func:`search_config`) on ``states`` (of
    ``sizes`` objects per task, None: all ``n``)."""

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
            huber_delta=config.huber_delta,
            sizes=sizes,
        )

    return energy_fn


@functools.partial(jax.jit, static_argnames=("bank", "config", "num_nodes", "proposal_apply"))
def _search_batch(
    bank, params, states, key, config, num_nodes, proposal_params, proposal_apply, sizes=None
):
    prior = (config.symmetric_structure, config.node_types)
    proposal_fn = structure_priors.make_search_move(
        config.proposal, bank.num_modules, num_nodes, config.uniform_mix, *prior
    )
    energy_fn = search_energy(bank, params, states, config, sizes)

    k_init, k_anneal = jax.random.split(key)
    aux, aux_kind = None, None
    if config.proposal in structure_lib.EXACT_KINDS:
        aux, aux_kind = exact_scores(bank, params, states, config, sizes)[0], "scores"
    elif proposal_apply is not None:
        aux, aux_kind = proposal_apply(proposal_params, states), "logits"
    init = structure_priors.search_initial_structure(
        k_init, energy_fn, aux, aux_kind, states.shape[0], num_nodes, bank.num_modules, *prior
    )
    state = annealing.AnnealState(init, energy_fn(init), k_anneal, jnp.float32(config.t_start))
    temps = annealing.geometric_temperatures(config.t_start, config.t_end, config.num_steps)
    state, diag = annealing.anneal(state, energy_fn, proposal_fn, temps, aux)
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
    sizes: np.ndarray | None = None,
):
    """Anneals a structure for every task, weights fixed.

    Args:
      states: ``[N, T_obs, n, 4]`` observed frames of each task.
      key: PRNG key; batch ``i`` uses ``fold_in(key, i)``.
      proposal_params, proposal_apply: learned proposal (initialises from its argmax).
      progress: called as ``progress(tasks_done, N)``.
      put, fetch: host batch -> device array and back (defaults: one device; a sharded
        run passes :mod:`nri_modular.distributed` placements).
      sizes: int ``[N]`` objects per task when systems of different sizes share the set
        (padded to ``n``; batches compile once per bucket of their graph budget).

    Returns:
      ``(structures int32 [N, E], energies [N])`` as numpy; edges touching padded objects
      hold module 0.
    """
    if sizes is not None and proposal_apply is not None:
        raise ValueError("systems of different sizes do not support the learned proposal yet")
    n_tasks, _, n, _ = states.shape
    structures, energies = [], []
    for i, (idx, valid) in enumerate(batching.padded_batches(n_tasks, config.batch_size)):
        s, e, _ = _search_batch(
            bank,
            params,
            put(states[idx]),
            jax.random.fold_in(key, i),
            config,
            n,
            proposal_params,
            proposal_apply,
            batch_sizes(sizes, idx, put),
        )
        s = fetch(s)
        if sizes is not None:  # padded edges: whatever the search left there, module 0
            s = np.where(graph_lib.edge_mask(np.asarray(sizes)[idx], n), s, 0)
        structures.append(s[:valid])
        energies.append(fetch(e)[:valid])
        if progress is not None:
            progress(min((i + 1) * config.batch_size, n_tasks), n_tasks)
    return np.concatenate(structures), np.concatenate(energies)


@functools.partial(
    jax.jit, static_argnames=("bank", "horizon", "block_rows", "edge_compute", "groups")
)
def _rollout_sq_error(
    bank, params, states, structure, start, horizon, block_rows, edge_compute, groups, scale, sizes
):
    """Per-task, per-step squared errors of one open-loop rollout from frame ``start``.

    Returns ``(err, scaled)``, each ``[B, horizon]``: ``err`` in normalised units,
    ``scaled`` with (x, y, vx, vy) errors times ``scale [4]`` before squaring (None
    without a scale), both from the same predictions.
    """
    preds = gnn.rollout(
        bank,
        params,
        jax.lax.dynamic_index_in_dim(states, start, axis=1, keepdims=False),
        structure,
        horizon,
        block_rows=block_rows,
        edge_compute=edge_compute,
        groups=groups,
        sizes=sizes,
    )
    truth = jax.lax.dynamic_slice_in_dim(states, start + 1, horizon, axis=1)
    real = None if sizes is None else sizes.node_mask(states.shape[2])
    err = metrics.squared_error_per_step(preds, truth, real)
    if scale is None:
        return err, None
    factors = scale[None, None, None]
    return err, metrics.squared_error_per_step(preds * factors, truth * factors, real)


class PredictionMSE(NamedTuple):
    """Per-step MSE of open-loop predictions (:func:`prediction_mse`).

    Attributes:
      normalised: ``[horizon]`` in normalised units.
      physical: ``[horizon]`` in the units of the ``dim_scale`` asked for, else None.
    """

    normalised: np.ndarray
    physical: np.ndarray | None = None


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
    dim_scale: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
) -> PredictionMSE:
    """MSE of open-loop rollouts from ``start_frame``, per step.

    Args:
      states: ``[N, T, n, 4]`` with ``T > start_frame + horizon``.
      structures: int32 ``[N, E]``.
      groups: edge layouts per ``groups`` slices of a batch (see ``gnn.rollout``).
      dim_scale: ``[4]`` factors applied to the errors of (x, y, vx, vy) before squaring
        (:func:`physical_scale` gives physical units): the same rollouts then also give
        the MSE in those units.
      put, fetch: as in :func:`search_structures`.
      sizes: int ``[N]`` objects per task (None: all ``n``): each task's MSE is over its
        real objects.

    Returns:
      A :class:`PredictionMSE`: ``normalised [horizon]`` (entry ``k - 1`` is the MSE of
      the ``k``-step prediction) and, with ``dim_scale``, ``physical [horizon]`` in its
      units (else None).
    """
    n_tasks, t = states.shape[:2]
    if start_frame + horizon >= t:
        raise ValueError(
            f"need more than start_frame + horizon = {start_frame + horizon} frames, got {t}"
        )
    if structures.shape[0] != n_tasks:
        raise ValueError(f"{structures.shape[0]} structures for {n_tasks} tasks")
    scale = None if dim_scale is None else jnp.asarray(dim_scale, states.dtype)
    total, total_scaled = np.zeros(horizon), np.zeros(horizon)
    for idx, valid in batching.padded_batches(n_tasks, batch_size):
        err, scaled = _rollout_sq_error(
            bank,
            params,
            put(states[idx]),
            put(structures[idx]),
            start_frame,
            horizon,
            block_rows,
            edge_compute,
            groups,
            scale,
            batch_sizes(sizes, idx, put),
        )
        err = fetch(err)[:valid]
        check_finite_errors(err, idx[:valid])
        total += err.sum(0)
        if scaled is not None:
            total_scaled += fetch(scaled)[:valid].sum(0)
    return PredictionMSE(total / n_tasks, None if scale is None else total_scaled / n_tasks)


class NonFiniteResultError(ArithmeticError):
    """A prediction error is NaN or infinite: no result is written (the message names the
    task and step)."""


def check_finite_errors(err: np.ndarray, task_ids: np.ndarray) -> None:
    """Raises :class:`NonFiniteResultError` naming the first task and step whose squared
    error ``err [B, horizon]`` (of tasks ``task_ids [B]``) is not finite."""
    bad = ~np.isfinite(err)
    if bad.any():
        row, step = map(int, np.argwhere(bad)[0])
        raise NonFiniteResultError(
            f"the {step + 1}-step prediction of test task {int(task_ids[row])} has a "
            f"non-finite squared error ({err[row, step]}); {int(bad.any(1).sum())} of "
            f"{len(err)} tasks in its batch are affected: check that task's trajectory "
            "(values far outside the training range overflow float32) or the model; no "
            "results written"
        )


def check_finite_results(results: dict, where: str) -> None:
    """Raises :class:`NonFiniteResultError` naming every number of ``results`` (floats,
    lists of floats) that is NaN or infinite, before they are written to ``where``."""
    bad = []
    for key, value in results.items():
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, float) and not np.isfinite(v) for v in values):
            bad.append(key)
    if bad:
        raise NonFiniteResultError(
            f"non-finite results {bad} ({', '.join(f'{k}={results[k]!r}' for k in bad[:3])}); "
            f"{where} not written"
        )


def frames_needed(obs_frames: int, horizon: int) -> int:
    """Frames a task needs for meta-test: ``obs_frames`` searched, then ``horizon`` predicted
    from frame ``obs_frames`` (its truth: frames ``obs_frames + 1 ..``); ``horizon = 0``
    scores the structures only (Kipf et al.'s 49-frame valid split)."""
    return obs_frames + horizon + 1 if horizon else obs_frames


def _mse_entries(mse: np.ndarray, suffix: str) -> dict:
    """Results entries of a per-step MSE ``[horizon]``: at 1/10/20 steps and per step."""
    return {
        f"mse_1{suffix}": float(mse[0]) if len(mse) >= 1 else None,
        f"mse_10{suffix}": float(mse[9]) if len(mse) >= 10 else None,
        f"mse_20{suffix}": float(mse[19]) if len(mse) >= 20 else None,
        f"mse_per_step{suffix}": [float(v) for v in mse],
    }


def meta_test(
    config: Config,
    bank: ModuleBank,
    state,
    train_labels,
    test,
    proposal_apply=None,
    mesh=None,
    mapping=None,
    keep_structures: bool = False,
    dim_scale: np.ndarray | None = None,
    relations: datasets.Relations | None | str = "system",
) -> dict:
    """Structure search on the test tasks' observed frames, then prediction and accuracy.

    Args:
      config: the run's config (search, horizon and batch settings).
      bank, state: the module bank and the trained ``TrainState`` (its ``structures [N, E]``
        of the training tasks choose the module -> relation map).
      train_labels: int ``[N, E]`` true relation types of the training tasks.
      test: the test :class:`~nri_modular.data.datasets.Split` (``states [M, T, n, 4]``).
      proposal_apply: the learned proposal network (used when ``test_proposal`` is
        ``blocked_gibbs``).
      mesh: with a mesh, every batch of test tasks is split over its ``data`` axis (the
        jitted search and rollout compile for those shardings).
      mapping: int ``[K]`` module -> relation map to use instead of choosing it on
        ``train_labels`` (e.g. the one a run saved); ``train_labels`` may then be None.
      keep_structures: also return the searched structures (``"structures"``, int32
        ``[M, E]``, not JSON).
      dim_scale: ``[state_dim]`` factors of each channel's errors (:func:`physical_scale`):
        the same rollouts also give the MSE in those units (``*_physical`` entries).
      relations: what the labels mean (:class:`~nri_modular.data.datasets.Relations`; the
        dataset's ``relations``); ``"system"`` (default): those of ``config.system``; None:
        no labels (one's own unlabelled data).

    Returns:
      The results: edge accuracy (test, and of the training structures; None without
      labels or map), AUROC, MSE at 1/10/20 steps and per step (and in physical units with
      ``dim_scale``), the module -> relation map, the fraction of test edges each module
      drives (``module_usage``), the search time.
    """
    start = time.time()
    put, fetch = jnp.asarray, np.asarray
    if mesh is not None:
        distributed.check_divisible(mesh, test_batch_size=config.test_batch_size)

        def put(x):
            return distributed.put_batch(mesh, x)

        fetch = distributed.to_host
    train_structures = distributed.to_host(state.structures)
    if isinstance(relations, str):
        relations = datasets.system_relations(config.system)
    if mapping is None and train_labels is not None and relations is not None:
        mapping = metrics.module_mapping(
            train_structures, train_labels, config.num_modules, relations.num_types
        )
    mapping = None if mapping is None else np.asarray(mapping)
    labelled = mapping is not None and test.labels is not None
    observed = test.states[:, : config.obs_frames]

    def progress(done, total):
        logging.info("meta-test structure search: %d/%d tasks", done, total)

    learned = config.test_proposal == "blocked_gibbs"
    structures, _ = search_structures(
        bank,
        state.params,
        observed,
        jax.random.PRNGKey(config.seed + 1),
        search_config(config),
        proposal_params=state.proposal_params if learned else None,
        proposal_apply=proposal_apply if learned else None,
        progress=progress,
        put=put,
        fetch=fetch,
        sizes=test.sizes,
    )
    search_seconds = time.time() - start
    mse, physical = np.zeros(0), np.zeros(0)  # horizon 0: the structures only
    if config.horizon > 0:
        mse, physical = prediction_mse(
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
            dim_scale=dim_scale,
            sizes=test.sizes,
        )
    penalties, evidence, auroc = _edge_scores(
        config,
        bank,
        state.params,
        observed,
        structures,
        mapping,
        test.labels,
        None if relations is None else relations.none,
        put,
        fetch,
        test.sizes,
    )
    real = np.ones(structures.shape, bool)
    if test.sizes is not None:
        real = graph_lib.edge_mask(np.asarray(test.sizes), graph_lib.num_nodes(structures.shape[1]))
    usage = np.bincount(structures[real], minlength=config.num_modules) / real.sum()
    results = {
        "system": config.system,
        "dataset": config.dataset,
        "edge_accuracy": metrics.edge_accuracy(structures, test.labels, mapping)
        if labelled
        else None,
        "auroc": auroc,
        "train_edge_accuracy": None
        if train_labels is None or mapping is None
        else metrics.edge_accuracy(train_structures, train_labels, mapping),
        **_mse_entries(mse, ""),
        "module_to_relation": None if mapping is None else [int(v) for v in mapping],
        "module_usage": [float(u) for u in usage],
        "num_test_tasks": int(test.states.shape[0]),
        "test_search_seconds": search_seconds,
    }
    if test.sizes is not None and labelled:
        results["edge_accuracy_by_size"] = metrics.accuracy_by_size(
            structures, test.labels, mapping, test.sizes
        )
    if dim_scale is not None:
        results.update(_mse_entries(physical, "_physical"))
    if keep_structures:
        results["structures"] = structures
        results["edge_penalties"] = penalties
        results["edge_evidence"] = evidence
    return results


def _edge_scores(
    config, bank, params, observed, structures, mapping, labels, none, put, fetch, sizes=None
):
    """``(penalties [M, E, K], evidence [M, E], auroc)`` of meta-test's structures.

    ``evidence`` favours an edge existing (any relation but the "no relation" code
    ``none``, e.g. :data:`nri_modular.data.datasets.NO_RELATION`) and ``auroc`` is its AUROC
    against the labels; both None without that type (charged), without a map or labels,
    or with too many settings to score exactly (``K^(n-1)`` above
    :data:`nri_modular.structure.MAX_EXACT_SETTINGS`).
    """
    n = observed.shape[2]
    if bank.num_modules ** (n - 1) > structure_lib.MAX_EXACT_SETTINGS:
        return None, None, None
    penalties = edge_penalties(
        bank, params, observed, structures, search_config(config), put, fetch, sizes
    )
    if none is None or mapping is None:
        return penalties, None, None
    absent = edge_evidence(penalties, mapping, none)
    if absent is None:
        return penalties, None, None
    evidence = -absent
    if labels is None:
        return penalties, evidence, None
    labels = np.asarray(labels)
    real = labels >= 0  # padded edges (-1) are no edges
    exists = labels[real] != none
    auroc = metrics.auroc(evidence[real], exists) if exists.any() and not exists.all() else None
    return penalties, evidence, auroc


def physical_scale(normalization: Normalization) -> np.ndarray:
    """``[state_dim]`` factors taking normalised errors of each state channel (x, y, vx,
    vy) to physical units: half of each channel's training range."""
    return (np.array(normalization.maximum) - np.array(normalization.minimum)) / 2

"""Structures (one module index per directed edge) and the annealing moves that change them.

A structure is int32 ``[n(n-1)]`` per task (``[tasks, n(n-1)]`` batched), receiver-major
(see :mod:`nri_modular.graph`): the ``n - 1`` edges entering node ``i`` are the slice
``[i*(n-1), (i+1)*(n-1))``.

Moves share one signature so search is pluggable::

  # Signature: (key, structure [B, E] int32, aux) -> structure [B, E]
  MoveFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]

A move kind (:data:`MOVE_KINDS`, chosen by the ``--proposal`` / ``--test_proposal`` flags)
proposes the next structure of a Metropolis step; the learned proposal *network* that some
moves sample from is :mod:`nri_modular.proposal_net`.

``aux`` is what the move reads, fixed during one annealing run: ``None`` for the
uniform move, the learned proposal network's per-edge module logits ``[B, E, K]`` for
blocked Gibbs, and the one-step losses of every setting of every node's incoming edges
``[B, n, K^(n-1)]`` (:func:`nri_modular.gnn.incoming_config_losses`) for exact local moves.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nri_modular import graph as graph_lib

MoveFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]

MOVE_KINDS = ("uniform", "blocked_gibbs", "exact_local", "exact_sweep")
# Kinds whose aux input is the one-step losses of every node's incoming settings.
EXACT_KINDS = ("exact_local", "exact_sweep")
# Most settings of one node's incoming edges (K^(n-1)) the exact moves enumerate.
MAX_EXACT_SETTINGS = 65536


def random_structures(key: jax.Array, num_tasks: int, num_nodes: int, num_modules: int):
    """Uniformly random structures, int32 ``[num_tasks, n(n-1)]``."""
    if num_tasks <= 0:
        raise ValueError(f"num_tasks must be positive, got {num_tasks}")
    e = graph_lib.num_edges(num_nodes)
    return jax.random.randint(key, (num_tasks, e), 0, num_modules, dtype=jnp.int32)


def propose_uniform(key: jax.Array, structure: jax.Array, num_modules: int) -> jax.Array:
    """Reassigns one uniformly chosen edge per task to a different, uniformly chosen module.

    Args:
      structure: int32 ``[B, E]``.

    Returns:
      int32 ``[B, E]`` differing from ``structure`` in exactly one edge per task (K > 1).
    """
    b, e = structure.shape
    k_edge, k_mod = jax.random.split(key)
    edge = jax.random.randint(k_edge, (b,), 0, e)
    old = structure[jnp.arange(b), edge]
    shift = jax.random.randint(k_mod, (b,), 1, max(num_modules, 2))
    new = (old + shift) % num_modules
    return structure.at[jnp.arange(b), edge].set(new.astype(structure.dtype))


def incoming_edge_mask(node: jax.Array, num_nodes: int) -> jax.Array:
    """Mask of the edges entering ``node``: bool ``[B, n(n-1)]`` for ``node`` int ``[B]``."""
    receivers, _ = graph_lib.edge_index(num_nodes)
    return jnp.asarray(receivers)[None, :] == node[:, None]


def propose_blocked_gibbs(
    key: jax.Array, structure: jax.Array, logits: jax.Array, num_nodes: int
) -> jax.Array:
    """Blocked Gibbs: pick a random node, resample all its incoming edges from ``logits``.

    Args:
      structure: int32 ``[B, E]``.
      logits: ``[B, E, K]`` factored proposal distribution over modules per edge.

    Returns:
      int32 ``[B, E]``; only edges into the chosen node may differ.
    """
    b, e = structure.shape
    k_node, k_sample = jax.random.split(key)
    node = jax.random.randint(k_node, (b,), 0, num_nodes)
    sample = jax.random.categorical(k_sample, logits, axis=-1).astype(structure.dtype)
    return jnp.where(incoming_edge_mask(node, num_nodes), sample, structure)


def incoming_configs(num_nodes: int, num_modules: int):
    """Every setting of one node's ``n - 1`` incoming edges: int32 ``[K^(n-1), n-1]``."""
    if num_modules ** (num_nodes - 1) > MAX_EXACT_SETTINGS:
        raise ValueError(
            f"exact local moves enumerate K^(n-1) = {num_modules}^{num_nodes - 1} settings; "
            f"too many (use at most {MAX_EXACT_SETTINGS}, e.g. n <= 17 with K = 2)"
        )
    return np.asarray(list(itertools.product(range(num_modules), repeat=num_nodes - 1)), np.int32)


def propose_exact_local(
    key: jax.Array, structure: jax.Array, scores: jax.Array, num_nodes: int, num_modules: int
) -> jax.Array:
    """Exact blocked move: pick a random node, give its incoming edges their best setting.

    Args:
      structure: int32 ``[B, E]``.
      scores: ``[B, n, C]`` loss of each setting (:func:`incoming_configs` order).

    Returns:
      int32 ``[B, E]``; only edges into the chosen node may differ.
    """
    b = structure.shape[0]
    configs = jnp.asarray(incoming_configs(num_nodes, num_modules))
    node = jax.random.randint(key, (b,), 0, num_nodes)
    # take_along_axis, not scores[arange(B), node]: a gather batched over tasks, which the
    # SPMD partitioner keeps on the device holding each task.
    node_scores = jnp.take_along_axis(scores, node[:, None, None], axis=1)[:, 0]  # [B, C]
    best = jnp.argmin(node_scores, axis=-1)  # [B]
    setting = configs[best]  # [B, n-1]
    tiled = jnp.tile(setting, (1, num_nodes)).astype(structure.dtype)  # [B, E] receiver-major
    return jnp.where(incoming_edge_mask(node, num_nodes), tiled, structure)


def edge_module_scores(scores, structure, num_nodes: int, num_modules: int) -> np.ndarray:
    """Each edge's score under each module, the node's other incoming edges as they are.

    Reads the exact scores of every incoming setting (:func:`incoming_configs` order, the
    first edge the most significant base-``K`` digit): for edge ``j -> i`` and module ``m``,
    the score of node ``i``'s setting in ``structure`` with that one edge set to ``m``.

    Args:
      scores: ``[B, n, K^(n-1)]`` (e.g. :func:`nri_modular.evaluate.exact_scores`).
      structure: int ``[B, n(n-1)]``.

    Returns:
      ``[B, n(n-1), K]`` numpy; at each edge's own module it is the structure's score.
    """
    scores, structure = np.asarray(scores), np.asarray(structure)
    b, n, k = structure.shape[0], num_nodes, num_modules
    digits = structure.reshape(b, n, n - 1).astype(np.int64)
    weights = k ** np.arange(n - 2, -1, -1, dtype=np.int64)  # [n-1]
    code = (digits * weights).sum(-1)  # [B, n] index of each node's setting
    modules = np.arange(k, dtype=np.int64)
    alt = code[:, :, None, None] + (modules - digits[..., None]) * weights[:, None]  # [B,n,n-1,K]
    picked = np.take_along_axis(scores, alt.reshape(b, n, -1), axis=2)
    return picked.reshape(b, n * (n - 1), k)


def exact_best_structure(scores: jax.Array, num_nodes: int, num_modules: int) -> jax.Array:
    """Every node's best incoming setting at once: the exact argmin of the one-step loss.

    Args:
      scores: ``[B, n, C]``.

    Returns:
      int32 ``[B, n(n-1)]``.
    """
    configs = jnp.asarray(incoming_configs(num_nodes, num_modules))
    return configs[jnp.argmin(scores, axis=-1)].reshape(scores.shape[0], -1)


def check_move_kind(kind: str) -> None:
    """Raises ``ValueError`` naming :data:`MOVE_KINDS` unless ``kind`` is one of them."""
    if kind not in MOVE_KINDS:
        raise ValueError(f"unknown proposal {kind!r}; expected one of the moves {MOVE_KINDS}")


def make_move(kind: str, num_modules: int, num_nodes: int, uniform_mix: float = 0.0):
    """Annealing move function by name (the ``--proposal`` flag's value), without a
    structure prior (search calls :func:`nri_modular.structure_priors.make_search_move`,
    which takes the prior and returns this move when none is on).

    Args:
      kind: ``"uniform"``, ``"blocked_gibbs"``, ``"exact_local"`` (one random node's
        incoming edges to their best setting) or ``"exact_sweep"`` (every node's at once:
        the exact argmin of the one-step loss).
      uniform_mix: for ``blocked_gibbs``, probability of making a uniform move instead
        (keeps the chain ergodic whatever the learned proposal says).

    Returns:
      A :data:`MoveFn`.
    """
    check_move_kind(kind)
    if not 0.0 <= uniform_mix <= 1.0:
        raise ValueError(f"uniform_mix must be in [0, 1], got {uniform_mix}")
    if num_modules < 1:
        raise ValueError(f"structure search needs at least 1 module, got {num_modules}")
    if num_modules == 1:  # one module for every pair: the only structure, kept

        def keep(key, structure, aux):
            del key, aux
            return structure

        return keep

    def uniform(key, structure, logits):
        del logits
        return propose_uniform(key, structure, num_modules)

    if kind == "uniform":
        return uniform
    if kind in EXACT_KINDS:
        incoming_configs(num_nodes, num_modules)  # Fails early if too many settings.

    def mixed(key, structure, aux):
        if aux is None:
            raise ValueError(f"{kind} move needs its aux input (logits or scores)")
        k_mix, k_u, k_p = jax.random.split(key, 3)
        use_uniform = jax.random.uniform(k_mix, (structure.shape[0], 1)) < uniform_mix
        if kind == "blocked_gibbs":
            move = propose_blocked_gibbs(k_p, structure, aux, num_nodes)
        elif kind == "exact_local":
            move = propose_exact_local(k_p, structure, aux, num_nodes, num_modules)
        else:  # exact_sweep: every node to its best setting at once.
            move = exact_best_structure(aux, num_nodes, num_modules).astype(structure.dtype)
        return jnp.where(use_uniform, propose_uniform(k_u, structure, num_modules), move)

    return mixed

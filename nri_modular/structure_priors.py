"""Structure priors beyond the paper: symmetric structures and latent node types.

Both priors restrict the structures search may visit; the model still reads an int32
``[B, n(n-1)]`` receiver-major structure (see :mod:`nri_modular.structure`), so the GNN is
unchanged.

* **Symmetric** (``symmetric=True``): edges ``j->i`` and ``i->j`` always use the same
  module. Search moves over the ``n(n-1)/2`` undirected pairs.
* **Node types** (``node_types=T > 0``): each particle has one of ``T`` latent types and
  an edge's module is a function of its two types. The map is fixed: *same type -> module
  1, different types -> module 0* (so ``K = 2``; symmetric by construction). For charged
  particles with ``T = 2`` the types are the charges and the map is the data's own label
  convention (relation ``(1 + q_i q_j) / 2``: like charges, repulsion, 1), so a bank trained
  on the true relations can be searched with this prior as it is. It can express only
  structures whose "module 1" relation is an equivalence relation (a disjoint union of at
  most ``T`` cliques), e.g. not a spring graph in general.

Moves keep the signature of :data:`nri_modular.structure.MoveFn` (``aux`` as there: the
proposal network's logits ``[B, E, K]`` or the one-step scores ``[B, n, C]`` of
:func:`nri_modular.gnn.incoming_config_losses`). Every move maps a structure satisfying the
prior to one satisfying it. Types are not stored: they are read back from the structure
(:func:`types_from_structure`), so the annealing state and ``TrainState`` are unchanged.

Search takes the prior through one door each: :func:`make_search_move` (the move of a kind
in :data:`nri_modular.structure.MOVE_KINDS`), :func:`random_prior_structures` (training's
start) and :func:`search_initial_structure` (meta-test's start); with no prior on, each
returns exactly what :mod:`nri_modular.structure` makes.

Exact local moves under a prior. The one-step loss is ``sum_j loss_j(S[edges into j])``.
Without a prior, changing node ``i``'s incoming edges changes only ``loss_i``. With the
symmetric constraint, setting the pairs of node ``i`` to ``c`` also sets edge ``i->j`` to
``c_j``, which changes node ``j``'s incoming setting in one slot; so the loss of the whole
structure after the move is::

  L(c) = scores[i, c] + sum_{j != i} scores[j, idx_j(S_j with slot(i in j) := c_j)]

(:func:`symmetric_move_losses`); every node's term is included, so ``L(c)`` is the exact
one-step loss of the structure after the move. A node-type move is the same with
``c_j = [t == t_j]`` for each of the ``T`` types ``t`` of node ``i``.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from nri_modular import graph as graph_lib
from nri_modular import proposal_net
from nri_modular import structure as structure_lib
from nri_modular.structure import MOVE_KINDS  # noqa: F401 (the kinds' one home, re-exported)

# Exact optimum by enumeration when at most this many candidate structures exist; beyond
# it, coordinate descent (every node to its exact local best, twice over the nodes).
MAX_ENUMERATED = 4096
# Meta-test search with node types starts from the exact energy (rollout loss) optimum over
# every type structure when there are at most this many (n=5, T=2: 16; one energy pass each).
MAX_EXHAUSTIVE = 256
# Node types need this many modules: same type -> module 1, different types -> module 0.
TYPE_MODULES = 2


# ---------------------------------------------------------------------------------------
# Index tables (numpy, static).


@functools.cache
def _tables(num_nodes: int):
    """Static index tables of the complete directed graph on ``n`` nodes.

    Returns:
      dict of int32 arrays:
        ``other [n, n-1]``: node at slot ``s`` of node ``i``'s incoming list (edge
          ``other[i, s] -> i`` is edge ``i*(n-1) + s``);
        ``back [n, n-1]``: slot of ``i`` in the incoming list of ``other[i, s]``;
        ``reverse [E]``: index of edge ``i->j`` for edge ``j->i``;
        ``out_edges [n, n-1]``: index of edge ``i -> other[i, s]``;
        ``in_slot [E]``: slot of an edge's sender in its receiver's list;
        ``out_slot [E]``: slot of an edge's receiver in its sender's list;
        ``pair [E]``: undirected pair of each edge (pairs ``a < b`` in lexicographic order);
        ``pair_edge [P]``: the edge ``b->a`` of pair ``(a, b)``.
    """
    n = num_nodes
    if n < 2:
        raise ValueError(f"structures need at least 2 nodes, got {n}")
    receivers, senders = graph_lib.edge_index(n)
    slots = np.arange(n - 1)
    other = np.where(slots[None, :] < np.arange(n)[:, None], slots[None, :], slots[None, :] + 1)
    i = np.arange(n)[:, None]
    back = np.where(i < other, i, i - 1)
    out_edges = other * (n - 1) + back
    in_slot = np.arange(n * (n - 1)) % (n - 1)
    out_slot = np.where(receivers < senders, receivers, receivers - 1)
    reverse = senders * (n - 1) + out_slot
    pairs = list(itertools.combinations(range(n), 2))
    pair_id = {p: k for k, p in enumerate(pairs)}
    pair = np.asarray(
        [pair_id[(min(r, s), max(r, s))] for r, s in zip(receivers, senders, strict=True)]
    )
    pair_edge = np.asarray([a * (n - 1) + (b - 1) for a, b in pairs])
    out = dict(
        other=other,
        back=back,
        reverse=reverse,
        out_edges=out_edges,
        in_slot=in_slot,
        out_slot=out_slot,
        pair=pair,
        pair_edge=pair_edge,
        receivers=receivers,
        senders=senders,
    )
    tables = {k: np.asarray(v, np.int32) for k, v in out.items()}
    for v in tables.values():
        v.setflags(write=False)
    return tables


def num_pairs(num_nodes: int) -> int:
    """Undirected pairs ``n(n-1)/2``."""
    return num_nodes * (num_nodes - 1) // 2


def radix(num_nodes: int, num_modules: int) -> np.ndarray:
    """int32 ``[n-1]`` weights with ``config_index = setting @ radix`` (the order of
    :func:`nri_modular.structure.incoming_configs`: first slot most significant)."""
    return (num_modules ** np.arange(num_nodes - 2, -1, -1)).astype(np.int32)


def config_index(structure: jax.Array, num_nodes: int, num_modules: int) -> jax.Array:
    """Index of each node's current incoming setting among ``incoming_configs``.

    Args:
      structure: int32 ``[B, E]``.

    Returns:
      int32 ``[B, n]``.
    """
    b = structure.shape[0]
    w = jnp.asarray(radix(num_nodes, num_modules))
    return (structure.reshape(b, num_nodes, num_nodes - 1) * w[None, None, :]).sum(-1)


# ---------------------------------------------------------------------------------------
# Symmetric structures.


def is_symmetric(structure: jax.Array, num_nodes: int) -> jax.Array:
    """bool ``[B]``: does edge ``j->i`` use the module of ``i->j`` for every pair?"""
    reverse = jnp.asarray(_tables(num_nodes)["reverse"])
    return (structure == structure[:, reverse]).all(axis=-1)


def pairs_to_structure(pair_modules: jax.Array, num_nodes: int) -> jax.Array:
    """int32 ``[B, P]`` module per undirected pair -> symmetric ``[B, E]`` structure."""
    p = num_pairs(num_nodes)
    if pair_modules.shape[-1] != p:
        raise ValueError(
            f"expected [..., {p}] pair modules for {num_nodes} nodes, got {pair_modules.shape}"
        )
    return pair_modules[..., _tables(num_nodes)["pair"]]  # numpy in, numpy out


def symmetrize(structure: jax.Array, num_nodes: int) -> jax.Array:
    """Symmetric structure taking each pair's module from its edge ``b->a`` (``a < b``).

    Args:
      structure: int32 ``[B, E]``.

    Returns:
      int32 ``[B, E]``, symmetric; equal to ``structure`` if it already is.
    """
    t = _tables(num_nodes)
    return pairs_to_structure(structure[:, jnp.asarray(t["pair_edge"])], num_nodes)


def random_symmetric_structures(key, num_tasks: int, num_nodes: int, num_modules: int):
    """Uniformly random symmetric structures, int32 ``[num_tasks, n(n-1)]``."""
    if num_tasks <= 0:
        raise ValueError(f"num_tasks must be positive, got {num_tasks}")
    pairs = jax.random.randint(
        key, (num_tasks, num_pairs(num_nodes)), 0, num_modules, dtype=jnp.int32
    )
    return pairs_to_structure(pairs, num_nodes)


def propose_uniform_symmetric(key, structure, num_nodes: int, num_modules: int) -> jax.Array:
    """Reassigns one random undirected pair per task (both its edges) to another module.

    Args:
      structure: int32 ``[B, E]``, symmetric.

    Returns:
      int32 ``[B, E]``, symmetric, differing in exactly the two edges of one pair (K > 1).
    """
    b = structure.shape[0]
    t = _tables(num_nodes)
    k_pair, k_mod = jax.random.split(key)
    pair = jax.random.randint(k_pair, (b,), 0, num_pairs(num_nodes))
    edge = jnp.asarray(t["pair_edge"])[pair]
    old = jnp.take_along_axis(structure, edge[:, None], axis=1)[:, 0]
    shift = jax.random.randint(k_mod, (b,), 1, max(num_modules, 2))
    new = ((old + shift) % num_modules).astype(structure.dtype)
    in_pair = jnp.asarray(t["pair"])[None, :] == pair[:, None]
    return jnp.where(in_pair, new[:, None], structure)


def set_node_pairs(structure, node, setting, num_nodes: int) -> jax.Array:
    """Sets both edges of every pair ``(node, other[node, s])`` to ``setting[:, s]``.

    Args:
      structure: int32 ``[B, E]``.
      node: int ``[B]``.
      setting: int ``[B, n-1]``, in the order of ``node``'s incoming slots.

    Returns:
      int32 ``[B, E]``; only edges into or out of ``node`` may differ.
    """
    t = _tables(num_nodes)
    setting = setting.astype(structure.dtype)
    incoming = jnp.asarray(t["receivers"])[None, :] == node[:, None]
    outgoing = jnp.asarray(t["senders"])[None, :] == node[:, None]
    new = jnp.where(incoming, setting[:, jnp.asarray(t["in_slot"])], structure)
    return jnp.where(outgoing, setting[:, jnp.asarray(t["out_slot"])], new)


def symmetric_move_losses(scores, structure, node, num_nodes: int, num_modules: int):
    """One-step loss of the whole structure after setting ``node``'s pairs to each setting.

    Args:
      scores: ``[B, n, C]`` one-step loss of node ``j`` under incoming setting ``c``
        (:func:`nri_modular.gnn.incoming_config_losses`, ``C = K^(n-1)``).
      structure: int32 ``[B, E]``, symmetric.
      node: int ``[B]``, the node ``i`` whose pairs move.

    Returns:
      ``[B, C]``: ``L(c) = scores[i, c] + sum_{j != i} scores[j, idx_j(c)]`` where
      ``idx_j(c)`` is node ``j``'s current setting with the slot of ``i`` set to ``c_j``.
    """
    n, k = num_nodes, num_modules
    t = _tables(n)
    configs = jnp.asarray(structure_lib.incoming_configs(n, k))  # [C, n-1]
    w = jnp.asarray(radix(n, k))
    others = jnp.asarray(t["other"])[node]  # [B, n-1]
    backs = jnp.asarray(t["back"])[node]  # [B, n-1]
    out_edges = jnp.asarray(t["out_edges"])[node]  # [B, n-1]: edge i -> other
    idx = config_index(structure, n, k)  # [B, n]
    cur_idx = jnp.take_along_axis(idx, others, axis=1)  # [B, n-1]
    cur_val = jnp.take_along_axis(structure, out_edges, axis=1)  # [B, n-1]
    new_idx = (
        cur_idx[:, :, None] + (configs.T[None, :, :] - cur_val[:, :, None]) * w[backs][:, :, None]
    )  # [B, n-1, C]
    other_scores = jnp.take_along_axis(scores, others[:, :, None], axis=1)  # [B, n-1, C]
    other_terms = jnp.take_along_axis(other_scores, new_idx, axis=2).sum(axis=1)  # [B, C]
    own = jnp.take_along_axis(scores, node[:, None, None], axis=1)[:, 0]  # [B, C]
    return own + other_terms


def _best_symmetric_move(scores, structure, node, num_nodes, num_modules):
    configs = jnp.asarray(structure_lib.incoming_configs(num_nodes, num_modules))
    losses = symmetric_move_losses(scores, structure, node, num_nodes, num_modules)
    return set_node_pairs(structure, node, configs[jnp.argmin(losses, axis=-1)], num_nodes)


def propose_exact_local_symmetric(key, structure, scores, num_nodes: int, num_modules: int):
    """Exact symmetric move: a random node's pairs to the setting of least total loss.

    Args:
      structure: int32 ``[B, E]``, symmetric.
      scores: ``[B, n, C]``.

    Returns:
      int32 ``[B, E]``, symmetric; the exact one-step optimum over the chosen node's pairs.
    """
    node = jax.random.randint(key, (structure.shape[0],), 0, num_nodes)
    return _best_symmetric_move(scores, structure, node, num_nodes, num_modules)


def propose_blocked_gibbs_symmetric(key, structure, logits, num_nodes: int) -> jax.Array:
    """Blocked Gibbs on pairs: a random node's pairs resampled from both edges' logits.

    The pair ``(i, j)`` gets module ``m`` with probability proportional to
    ``p_{j->i}(m) p_{i->j}(m)`` (both edges' factored proposal distributions).

    Args:
      structure: int32 ``[B, E]``.
      logits: ``[B, E, K]``.

    Returns:
      int32 ``[B, E]``, symmetric if ``structure`` is; only ``node``'s pairs may differ.
    """
    t = _tables(num_nodes)
    k_node, k_sample = jax.random.split(key)
    b = structure.shape[0]
    node = jax.random.randint(k_node, (b,), 0, num_nodes)
    logp = jax.nn.log_softmax(logits, axis=-1)
    pair_logp = logp + logp[:, jnp.asarray(t["reverse"])]  # [B, E, K]
    in_edges = node[:, None] * (num_nodes - 1) + jnp.arange(num_nodes - 1)[None, :]
    node_logp = jnp.take_along_axis(pair_logp, in_edges[:, :, None], axis=1)  # [B, n-1, K]
    setting = jax.random.categorical(k_sample, node_logp, axis=-1)
    return set_node_pairs(structure, node, setting, num_nodes)


def _enumerated_best(scores, candidates, num_nodes, num_modules):
    """Candidate (``[M, E]`` numpy) of least one-step loss per task: ``[B, E]``."""
    m = candidates.shape[0]
    cand_idx = candidates.reshape(m, num_nodes, num_nodes - 1) @ radix(num_nodes, num_modules)
    nodes = np.arange(num_nodes)[None, :]
    total = scores[:, nodes, cand_idx].sum(axis=-1)  # [B, M]
    return jnp.asarray(candidates)[jnp.argmin(total, axis=-1)]


def symmetric_candidates(num_nodes: int, num_modules: int) -> np.ndarray:
    """Every symmetric structure: int32 ``[K^P, E]`` (at most :data:`MAX_ENUMERATED`)."""
    p = num_pairs(num_nodes)
    if num_modules**p > MAX_ENUMERATED:
        raise ValueError(
            f"{num_modules}^{p} symmetric structures exceed MAX_ENUMERATED={MAX_ENUMERATED}"
        )
    pairs = np.asarray(list(itertools.product(range(num_modules), repeat=p)), np.int32)
    return pairs_to_structure(pairs, num_nodes)


def symmetric_exact_best(scores, num_nodes: int, num_modules: int) -> jax.Array:
    """Symmetric structure of least one-step loss.

    Exact (enumerates all ``K^P``) when ``K^P <= MAX_ENUMERATED`` (n = 5, K = 2: 1,024);
    otherwise coordinate descent from the symmetrised unconstrained optimum: two sweeps of
    every node to its exact local best (the loss never increases).

    Args:
      scores: ``[B, n, C]``.

    Returns:
      int32 ``[B, E]``, symmetric.
    """
    if num_modules ** num_pairs(num_nodes) <= MAX_ENUMERATED:
        return _enumerated_best(
            scores, symmetric_candidates(num_nodes, num_modules), num_nodes, num_modules
        )
    structure = symmetrize(
        structure_lib.exact_best_structure(scores, num_nodes, num_modules), num_nodes
    )
    b = scores.shape[0]
    for _ in range(2):
        for i in range(num_nodes):
            node = jnp.full((b,), i, jnp.int32)
            structure = _best_symmetric_move(scores, structure, node, num_nodes, num_modules)
    return structure


# ---------------------------------------------------------------------------------------
# Node types.


def check_node_types(node_types: int, num_modules: int) -> None:
    """Raises ``ValueError`` unless ``node_types >= 2`` and ``num_modules == 2``."""
    if node_types < 2:
        raise ValueError(f"node_types must be >= 2 (0 = off), got {node_types}")
    if num_modules != TYPE_MODULES:
        raise ValueError(
            f"node types map same type -> module 1 and different types -> module 0, so they "
            f"need num_modules={TYPE_MODULES}, got {num_modules}"
        )


def types_to_structure(types: jax.Array, num_nodes: int) -> jax.Array:
    """int ``[B, n]`` node types -> int32 ``[B, E]``: module 1 iff the two types are equal."""
    t = _tables(num_nodes)  # numpy in, numpy out
    return (types[:, t["receivers"]] == types[:, t["senders"]]).astype(np.int32)


def types_from_structure(structure: jax.Array, num_nodes: int) -> jax.Array:
    """Canonical types of a structure made by :func:`types_to_structure`.

    Types are labelled by first appearance (node 0 has type 0, the first node of another
    class type 1, ...), so ``types_to_structure(types_from_structure(s)) == s`` for every
    such ``s``. Other structures (module 1 not an equivalence relation) give a wrong answer.

    Args:
      structure: int32 ``[B, E]``.

    Returns:
      int32 ``[B, n]`` in ``[0, number of classes)``.
    """
    n = num_nodes
    b = structure.shape[0]
    t = _tables(n)
    same = jnp.eye(n, dtype=bool)[None].repeat(b, axis=0)
    same = same.at[:, jnp.asarray(t["receivers"]), jnp.asarray(t["senders"])].set(structure == 1)
    rep = jnp.argmax(same, axis=-1)  # [B, n]: least node of each node's class
    is_rep = rep == jnp.arange(n)[None, :]
    label = jnp.cumsum(is_rep, axis=-1) - 1  # label of each representative
    return jnp.take_along_axis(label, rep, axis=1).astype(jnp.int32)


def is_type_structure(structure: jax.Array, num_nodes: int, node_types: int) -> jax.Array:
    """bool ``[B]``: is ``structure`` made by some assignment of at most ``node_types`` types?"""
    types = types_from_structure(structure, num_nodes)
    back = types_to_structure(types, num_nodes)
    return (back == structure).all(axis=-1) & (types.max(axis=-1) < node_types)


def random_type_structures(key, num_tasks: int, num_nodes: int, node_types: int):
    """Structures of uniformly random node types, int32 ``[num_tasks, n(n-1)]``."""
    if num_tasks <= 0:
        raise ValueError(f"num_tasks must be positive, got {num_tasks}")
    types = jax.random.randint(key, (num_tasks, num_nodes), 0, node_types, dtype=jnp.int32)
    return types_to_structure(types, num_nodes)


def type_candidates(num_nodes: int, node_types: int) -> np.ndarray:
    """Every distinct structure of ``T`` node types: int32 ``[M, E]`` (n=5, T=2: 16)."""
    if node_types**num_nodes > 2**16:
        raise ValueError(
            f"{node_types}^{num_nodes} type assignments are too many to enumerate (max 2^16)"
        )
    types = np.asarray(list(itertools.product(range(node_types), repeat=num_nodes)), np.int32)
    structures = types_to_structure(types, num_nodes)
    return np.unique(structures, axis=0)


def _set_type(structure, node, new_type, num_nodes):
    types = types_from_structure(structure, num_nodes)
    onehot = jnp.arange(num_nodes)[None, :] == node[:, None]
    types = jnp.where(onehot, new_type[:, None].astype(types.dtype), types)
    return types_to_structure(types, num_nodes).astype(structure.dtype)


def propose_uniform_types(key, structure, num_nodes: int, node_types: int) -> jax.Array:
    """Gives one random node per task another uniformly chosen type.

    Args:
      structure: int32 ``[B, E]`` of node types.

    Returns:
      int32 ``[B, E]`` of node types (may equal ``structure`` when a lone node moves to an
      unused type, T > 2).
    """
    b = structure.shape[0]
    k_node, k_type = jax.random.split(key)
    node = jax.random.randint(k_node, (b,), 0, num_nodes)
    old = jnp.take_along_axis(types_from_structure(structure, num_nodes), node[:, None], 1)[:, 0]
    new = (old + jax.random.randint(k_type, (b,), 1, node_types)) % node_types
    return _set_type(structure, node, new, num_nodes)


def _type_settings(structure, node, num_nodes, node_types):
    """int32 ``[B, T, n-1]``: node ``i``'s pair setting if it took type ``t``."""
    types = types_from_structure(structure, num_nodes)
    others = jnp.asarray(_tables(num_nodes)["other"])[node]  # [B, n-1]
    other_types = jnp.take_along_axis(types, others, axis=1)  # [B, n-1]
    cand = jnp.arange(node_types)[None, :, None]
    return (cand == other_types[:, None, :]).astype(jnp.int32)


def type_move_losses(scores, structure, node, num_nodes: int, node_types: int):
    """One-step loss of the whole structure after giving ``node`` each type.

    Args:
      scores: ``[B, n, C]`` (``K = 2``).
      structure: int32 ``[B, E]`` of node types.
      node: int ``[B]``.

    Returns:
      ``[B, T]``.
    """
    losses = symmetric_move_losses(scores, structure, node, num_nodes, TYPE_MODULES)  # [B, C]
    settings = _type_settings(structure, node, num_nodes, node_types)  # [B, T, n-1]
    idx = (settings * jnp.asarray(radix(num_nodes, TYPE_MODULES))[None, None, :]).sum(-1)
    return jnp.take_along_axis(losses, idx, axis=1)


def propose_exact_local_types(key, structure, scores, num_nodes: int, node_types: int):
    """Exact node-type move: a random node takes the type of least total one-step loss."""
    node = jax.random.randint(key, (structure.shape[0],), 0, num_nodes)
    losses = type_move_losses(scores, structure, node, num_nodes, node_types)
    return _set_type(structure, node, jnp.argmin(losses, axis=-1), num_nodes)


def propose_blocked_gibbs_types(key, structure, logits, num_nodes: int, node_types: int):
    """A random node's type resampled with probability ``prod_j p_{j->i} p_{i->j}`` of the
    modules it implies (the proposal network's factored distribution, ``logits [B, E, 2]``)."""
    t = _tables(num_nodes)
    k_node, k_sample = jax.random.split(key)
    b = structure.shape[0]
    node = jax.random.randint(k_node, (b,), 0, num_nodes)
    logp = jax.nn.log_softmax(logits, axis=-1)
    pair_logp = logp + logp[:, jnp.asarray(t["reverse"])]  # [B, E, 2]
    in_edges = node[:, None] * (num_nodes - 1) + jnp.arange(num_nodes - 1)[None, :]
    node_logp = jnp.take_along_axis(pair_logp, in_edges[:, :, None], axis=1)  # [B, n-1, 2]
    settings = _type_settings(structure, node, num_nodes, node_types)  # [B, T, n-1]
    type_logp = jnp.take_along_axis(
        jnp.broadcast_to(node_logp[:, None], (*settings.shape, 2)), settings[..., None], axis=-1
    )[..., 0].sum(-1)  # [B, T]
    new = jax.random.categorical(k_sample, type_logp, axis=-1)
    return _set_type(structure, node, new, num_nodes)


def types_exact_best(scores, num_nodes: int, node_types: int) -> jax.Array:
    """Node-type structure of least one-step loss.

    Exact (enumerates every distinct type structure) when ``T^n <= 2^16``; otherwise
    coordinate descent from all nodes of type 0: two sweeps of every node to its best type.

    Args:
      scores: ``[B, n, 2^(n-1)]``.

    Returns:
      int32 ``[B, E]``.
    """
    if node_types**num_nodes <= 2**16:
        cands = type_candidates(num_nodes, node_types)
        return _enumerated_best(scores, cands, num_nodes, TYPE_MODULES)
    b = scores.shape[0]
    structure = jnp.zeros((b, graph_lib.num_edges(num_nodes)), jnp.int32)
    for _ in range(2):
        for i in range(num_nodes):
            node = jnp.full((b,), i, jnp.int32)
            losses = type_move_losses(scores, structure, node, num_nodes, node_types)
            structure = _set_type(structure, node, jnp.argmin(losses, axis=-1), num_nodes)
    return structure


# ---------------------------------------------------------------------------------------
# Exhaustive search with any energy.


def exhaustive_search(energy_fn, candidates, num_tasks: int):
    """Candidate of least energy for every task (one energy pass per candidate).

    Args:
      energy_fn: ``structure [B, E] -> energy [B]`` (e.g. the rollout loss).
      candidates: int32 ``[M, E]`` (e.g. :func:`type_candidates`).
      num_tasks: ``B``.

    Returns:
      ``(structure int32 [B, E], energy [B])``; non-finite energies never win.
    """
    candidates = jnp.asarray(candidates, jnp.int32)

    def one(c):
        e = energy_fn(jnp.broadcast_to(c[None, :], (num_tasks, c.shape[0])))
        return jnp.where(jnp.isfinite(e), e, jnp.inf)

    energies = jax.lax.map(one, candidates)  # [M, B]
    best = jnp.argmin(energies, axis=0)
    return candidates[best], jnp.take_along_axis(energies, best[None, :], axis=0)[0]


# ---------------------------------------------------------------------------------------
# One entry point per use: checks, initial structures, moves, exact optimum, candidates.


def check_prior(num_modules: int, num_nodes: int, symmetric: bool, node_types: int) -> None:
    """Raises ``ValueError`` for impossible prior settings."""
    if node_types < 0:
        raise ValueError(f"node_types must be >= 0 (0 = off), got {node_types}")
    if node_types:
        check_node_types(node_types, num_modules)
    if num_nodes < 2:
        raise ValueError(f"structures need at least 2 nodes, got {num_nodes}")
    del symmetric  # Any K works with symmetric structures.


def uses_prior(symmetric: bool, node_types: int) -> bool:
    """True if either prior is on."""
    return bool(symmetric) or node_types > 0


def random_prior_structures(key, num_tasks, num_nodes, num_modules, symmetric, node_types):
    """Random structures satisfying the prior, int32 ``[num_tasks, E]`` (types win over
    ``symmetric``: type structures are symmetric)."""
    check_prior(num_modules, num_nodes, symmetric, node_types)
    if node_types:
        return random_type_structures(key, num_tasks, num_nodes, node_types)
    if symmetric:
        return random_symmetric_structures(key, num_tasks, num_nodes, num_modules)
    return structure_lib.random_structures(key, num_tasks, num_nodes, num_modules)


def prior_exact_best(scores, num_nodes, num_modules, symmetric, node_types) -> jax.Array:
    """Least one-step-loss structure under the prior (see :func:`symmetric_exact_best`,
    :func:`types_exact_best`); int32 ``[B, E]``."""
    if node_types:
        return types_exact_best(scores, num_nodes, node_types)
    if symmetric:
        return symmetric_exact_best(scores, num_nodes, num_modules)
    return structure_lib.exact_best_structure(scores, num_nodes, num_modules)


def pair_argmax(logits: jax.Array, num_nodes: int) -> jax.Array:
    """Symmetric structure of most probable pairs under both edges' factored proposal
    (``logits [B, E, K]``, the product ``p_{j->i}(m) p_{i->j}(m)``); int32 ``[B, E]``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    pair_logp = logp + logp[:, jnp.asarray(_tables(num_nodes)["reverse"])]
    return jnp.argmax(pair_logp, axis=-1).astype(jnp.int32)


def prior_initial_structure(
    key, energy_fn, aux, aux_kind, num_tasks, num_nodes, num_modules, symmetric, node_types
):
    """Where meta-test search under a prior starts.

    Node types with at most :data:`MAX_EXHAUSTIVE` type structures: the exact optimum of
    ``energy_fn`` over all of them (:func:`exhaustive_search`). Otherwise, by ``aux_kind``:
    ``"scores"`` (exact kinds) -> :func:`prior_exact_best`; ``"logits"`` (proposal network)
    -> :func:`pair_argmax` (symmetric) or random types; ``None`` -> random under the prior.

    Args:
      energy_fn: ``structure [B, E] -> energy [B]``.
      aux: ``[B, n, C]`` scores, ``[B, E, K]`` logits or ``None``.

    Returns:
      int32 ``[num_tasks, E]`` satisfying the prior.
    """
    if node_types and len(type_candidates(num_nodes, node_types)) <= MAX_EXHAUSTIVE:
        return exhaustive_search(energy_fn, type_candidates(num_nodes, node_types), num_tasks)[0]
    if aux_kind == "scores":
        return prior_exact_best(aux, num_nodes, num_modules, symmetric, node_types)
    if aux_kind == "logits" and not node_types:
        return pair_argmax(aux, num_nodes)
    return random_prior_structures(key, num_tasks, num_nodes, num_modules, symmetric, node_types)


def make_prior_move(
    kind: str,
    num_modules: int,
    num_nodes: int,
    symmetric: bool,
    node_types: int,
    uniform_mix: float = 0.0,
):
    """Annealing move under a prior, by name (the kinds of :mod:`nri_modular.structure`).

    ``uniform`` changes one pair (symmetric) or one node's type; ``blocked_gibbs`` resamples
    one node's pairs / type from the proposal network's logits; ``exact_local`` gives one
    node's pairs / type their setting of least total one-step loss; ``exact_sweep`` moves to
    the prior's one-step optimum (:func:`prior_exact_best`). Non-uniform kinds make a
    uniform move with probability ``uniform_mix``.

    Returns:
      ``(key, structure [B, E], aux) -> structure [B, E]``, keeping the prior.
    """
    if kind not in structure_lib.MOVE_KINDS:
        raise ValueError(f"unknown move {kind!r}; expected one of {structure_lib.MOVE_KINDS}")
    if not uses_prior(symmetric, node_types):
        raise ValueError("make_prior_move needs symmetric=True or node_types > 0")
    if not 0.0 <= uniform_mix <= 1.0:
        raise ValueError(f"uniform_mix must be in [0, 1], got {uniform_mix}")
    if num_modules < 2:
        raise ValueError(f"structure search needs at least 2 modules, got {num_modules}")
    check_prior(num_modules, num_nodes, symmetric, node_types)
    if kind in structure_lib.EXACT_KINDS:
        structure_lib.incoming_configs(num_nodes, num_modules)  # Fails early if too many.
    n, k, types = num_nodes, num_modules, node_types

    def uniform(key, structure):
        if types:
            return propose_uniform_types(key, structure, n, types)
        return propose_uniform_symmetric(key, structure, n, k)

    def move(key, structure, aux):
        if kind == "uniform":
            return uniform(key, structure)
        if aux is None:
            raise ValueError(f"{kind} move needs its aux input (logits or scores)")
        k_mix, k_u, k_p = jax.random.split(key, 3)
        if kind == "blocked_gibbs":
            if types:
                new = propose_blocked_gibbs_types(k_p, structure, aux, n, types)
            else:
                new = propose_blocked_gibbs_symmetric(k_p, structure, aux, n)
        elif kind == "exact_local":
            if types:
                new = propose_exact_local_types(k_p, structure, aux, n, types)
            else:
                new = propose_exact_local_symmetric(k_p, structure, aux, n, k)
        else:
            new = prior_exact_best(aux, n, k, symmetric, types).astype(structure.dtype)
        use_uniform = jax.random.uniform(k_mix, (structure.shape[0], 1)) < uniform_mix
        return jnp.where(use_uniform, uniform(k_u, structure), new)

    return move


# ---------------------------------------------------------------------------------------
# The doors search takes the prior through: prior or plain, chosen here only.


def make_search_move(
    kind: str,
    num_modules: int,
    num_nodes: int,
    uniform_mix: float = 0.0,
    symmetric: bool = False,
    node_types: int = 0,
):
    """The annealing move of ``kind`` (one of :data:`nri_modular.structure.MOVE_KINDS`)
    under the structure prior, if any.

    With no prior on (``symmetric=False``, ``node_types=0``) it is the plain move of
    :func:`nri_modular.structure.make_move` (the identity for one module); otherwise the move
    of :func:`make_prior_move`, keeping the prior. Either way the same key gives the same
    move as that builder's.

    Returns:
      A :data:`nri_modular.structure.MoveFn`.
    """
    structure_lib.check_move_kind(kind)
    if uses_prior(symmetric, node_types):
        return make_prior_move(kind, num_modules, num_nodes, symmetric, node_types, uniform_mix)
    return structure_lib.make_move(kind, num_modules, num_nodes, uniform_mix)


def search_initial_structure(
    key,
    energy_fn,
    aux,
    aux_kind,
    num_tasks,
    num_nodes,
    num_modules,
    symmetric: bool = False,
    node_types: int = 0,
):
    """Where meta-test search starts, under the structure prior if any.

    With a prior on: :func:`prior_initial_structure`. Without, by ``aux_kind``: ``"scores"``
    (exact kinds) -> the exact one-step optimum
    (:func:`nri_modular.structure.exact_best_structure`); ``"logits"`` (proposal network)
    -> the most likely module per edge (:func:`nri_modular.proposal_net.argmax_structure`);
    ``None`` -> uniformly random structures drawn with ``key``.

    Args:
      energy_fn: ``structure [B, E] -> energy [B]`` (read only by node types' exhaustive
        start).
      aux: ``[B, n, C]`` scores, ``[B, E, K]`` logits or ``None``.

    Returns:
      int32 ``[num_tasks, E]``.
    """
    if uses_prior(symmetric, node_types):
        return prior_initial_structure(
            key, energy_fn, aux, aux_kind, num_tasks, num_nodes, num_modules, symmetric, node_types
        )
    if aux_kind == "scores":
        return structure_lib.exact_best_structure(aux, num_nodes, num_modules)
    if aux_kind == "logits":
        return proposal_net.argmax_structure(aux)
    return structure_lib.random_structures(key, num_tasks, num_nodes, num_modules)

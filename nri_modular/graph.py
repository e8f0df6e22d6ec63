"""Fully-connected directed graphs, edge indexing and jraph super-graphs.

Edge convention (the one of Kipf et al.'s released code): the directed edges of an
``n``-particle system are the off-diagonal entries of an ``[n, n]`` matrix in row-major
order, row = receiver ``i``, column = sender ``j``. Edge ``e`` therefore carries the
message ``j -> i`` and the ``n - 1`` edges entering receiver ``i`` are consecutive:
``e in [i*(n-1), (i+1)*(n-1))``. A structure / label vector is ``[n(n-1)]`` in this order.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax
import numpy as np


def num_edges(num_nodes: int) -> int:
    """Number of directed edges ``n(n-1)`` of the complete graph without self loops."""
    if num_nodes < 2:
        raise ValueError(f"need at least 2 particles for a graph, got {num_nodes}")
    return num_nodes * (num_nodes - 1)


def num_nodes(num_edges_: int) -> int:
    """``n`` of the complete directed graph with ``n(n-1)`` edges (inverse of :func:`num_edges`)."""
    n = int(round((1 + (1 + 4 * num_edges_) ** 0.5) / 2))
    if n * (n - 1) != num_edges_ or n < 2:
        raise ValueError(f"{num_edges_} is not n(n-1) for any n >= 2")
    return n


@functools.cache
def edge_index(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Receivers and senders of the complete directed graph, receiver-major.

    Returns:
      ``(receivers, senders)``, each int32 ``[n(n-1)]``;
      edge ``e`` is ``senders[e] -> receivers[e]``.
    """
    num_edges(num_nodes)
    receivers, senders = np.where(~np.eye(num_nodes, dtype=bool))
    receivers = receivers.astype(np.int32)
    senders = senders.astype(np.int32)
    receivers.setflags(write=False)
    senders.setflags(write=False)
    return receivers, senders


def matrix_to_edges(matrix: np.ndarray) -> np.ndarray:
    """Directed-edge vector from a relation matrix.

    Args:
      matrix: ``[..., n, n]``, entry ``[i, j]`` is the relation of ``j -> i``.

    Returns:
      ``[..., n(n-1)]`` in the receiver-major order of :func:`edge_index`.
    """
    n = matrix.shape[-1]
    if matrix.shape[-2] != n:
        raise ValueError(f"relation matrix must be square in its last two axes, got {matrix.shape}")
    receivers, senders = edge_index(n)
    return matrix[..., receivers, senders]


def edges_to_matrix(edges: np.ndarray, num_nodes: int, fill=0) -> np.ndarray:
    """Inverse of :func:`matrix_to_edges`; the diagonal is ``fill``.

    Args:
      edges: ``[..., n(n-1)]``.

    Returns:
      ``[..., n, n]``.
    """
    e = num_edges(num_nodes)
    if edges.shape[-1] != e:
        raise ValueError(f"expected {e} edges for {num_nodes} particles, got {edges.shape[-1]}")
    receivers, senders = edge_index(num_nodes)
    out = np.full(edges.shape[:-1] + (num_nodes, num_nodes), fill, dtype=edges.dtype)
    out[..., receivers, senders] = edges
    return out


def node_mask(sizes, n: int):
    """Which objects are real: bool ``[..., n]``, ``mask[..., i] = i < sizes[...]``.

    Args:
      sizes: int ``[...]`` (e.g. :attr:`Split.sizes` ``[sims]``), numpy or JAX (traced
        too: the result is then a JAX array).
      n: the padded object count.
    """
    xp = _array_module(sizes)
    size = xp.asarray(sizes)[..., None]
    return xp.arange(n).reshape((1,) * (size.ndim - 1) + (n,)) < size


def edge_mask(sizes, n: int):
    """Which directed edges are real: bool ``[..., n(n-1)]`` in the receiver-major order
    of :func:`nri_modular.graph.edge_index`; edge ``j -> i`` is real iff ``i < size``
    and ``j < size`` (else it touches padding: its label is ``-1``).

    Args:
      sizes: int ``[...]``, numpy or JAX (as :func:`node_mask`).
      n: the padded object count.
    """
    xp = _array_module(sizes)
    size = xp.asarray(sizes)[..., None]
    lead = (1,) * (size.ndim - 1)
    receivers, senders = (xp.asarray(a).reshape(lead + a.shape) for a in edge_index(n))
    return (receivers < size) & (senders < size)


def _traced(x) -> bool:
    """Whether ``x`` is a JAX tracer (its values unknown until run)."""
    import jax

    return isinstance(x, jax.core.Tracer)


def _array_module(x):
    """``jax.numpy`` for JAX arrays (traced too), else ``numpy``."""
    import jax

    return jax.numpy if isinstance(x, jax.Array) else np


class GraphBudget(NamedTuple):
    """Static sizes of a padded super-graph (what ``jraph.pad_with_graphs`` pads to).

    One compiled program per budget: :func:`graph_budget` rounds a batch's totals up to a
    few buckets so that batches of systems of different sizes share programs.
    """

    nodes: int
    edges: int


def bucket(count: int, steps: int = 8) -> int:
    """Smallest ``m * 2**k >= count`` with ``steps <= m < 2 * steps`` (or ``count`` if small).

    Buckets grow geometrically: at most ``1 / steps`` of a budget is padding, and the
    totals of random batches fall into a handful of buckets.
    """
    if count <= 2 * steps:
        return max(int(count), 1)
    k = int(count).bit_length() - steps.bit_length()
    quantum = 1 << max(k, 0)
    return -(-int(count) // quantum) * quantum


def graph_budget(sizes) -> GraphBudget:
    """Host side: the bucketed budget of tasks with ``sizes`` objects (numpy ``[G]``).

    Leaves room for jraph's padding graph (at least one padding node, which receives every
    padding edge).
    """
    nodes, edges = _needed(sizes)
    return GraphBudget(bucket(nodes), bucket(edges))


def check_budget(sizes, budget: GraphBudget) -> None:
    """Host side: ``budget`` holds the tasks of ``sizes`` (a too-small budget drops nodes)."""
    nodes, edges = _needed(sizes)
    if budget.nodes < nodes or budget.edges < edges:
        raise ValueError(
            f"graph budget {tuple(budget)} is too small for tasks of {nodes - 1} objects and "
            f"{edges} edges (use graph_budget(sizes) = {tuple(graph_budget(sizes))})"
        )


def _needed(sizes) -> tuple[int, int]:
    """The least ``(nodes, edges)`` budget of tasks of ``sizes`` objects: their nodes plus
    jraph's padding node, and their directed edges."""
    sizes = np.asarray(sizes, np.int64)
    if sizes.ndim != 1 or not sizes.size or sizes.min() < 2:
        raise ValueError(f"sizes must be a non-empty [G] array of values >= 2, got {sizes}")
    return int(sizes.sum()) + 1, int((sizes * (sizes - 1)).sum())


@flax.struct.dataclass
class Sizes:
    """Objects per task of a batch of systems of different sizes, and its static budget.

    A pytree: ``counts`` is data (traced under ``jit``), ``budget`` is static, so each
    bucket compiles once.

    Attributes:
      counts: int32 ``[G]`` objects of each task (2..n).
      budget: padded super-graph totals for one frame of the ``G`` tasks.
    """

    counts: Any
    budget: GraphBudget = flax.struct.field(pytree_node=False)

    @classmethod
    def of(cls, counts) -> Sizes:
        """Host side: ``counts`` (numpy ``[G]``) with their bucketed budget."""
        counts = np.asarray(counts)
        return cls(counts.astype(np.int32), graph_budget(counts))

    def repeat(self, times: int) -> Sizes:
        """Each task ``times`` times in a row (``jnp.repeat``), the budget scaled to hold them."""
        import jax.numpy as jnp

        budget = GraphBudget(self.budget.nodes * times, self.budget.edges * times)
        return Sizes(jnp.repeat(self.counts, times, axis=0), budget)

    def node_mask(self, num_nodes: int):
        """bool ``[G, n]``: which of the ``n`` padded objects of each task are real."""
        return node_mask(self.counts, num_nodes)

    def edge_mask(self, num_nodes: int):
        """bool ``[G, n(n-1)]``: which directed edges (receiver-major) join real objects."""
        return edge_mask(self.counts, num_nodes)


def tasks_to_graphs(states, structure, sizes: Sizes | None = None):
    """Super-graph of ``G`` task graphs (one ``GraphsTuple``, jraph's batching).

    Task ``g`` has ``sizes[g]`` objects (all ``n`` when ``sizes`` is None): its real nodes
    are the first ``sizes[g]`` rows of ``states[g]`` and its edges the complete directed
    graph on them, taken from ``structure[g]`` (receiver-major over ``n``, see
    :func:`edge_index`; entries of edges touching padded objects are ignored). Traceable
    (``sizes.counts`` may be traced; its budget is static).

    Args:
      states: ``[G, n, d]`` node states, objects ``sizes[g]..n-1`` of task ``g`` padding.
      structure: int ``[G, n(n-1)]`` module index per directed edge.
      sizes: objects per task and the padded totals, or None (every task has ``n``).

    Returns:
      ``(graphs, node_position)``: a ``jraph.GraphsTuple`` with ``nodes [N, d]``, ``edges
      [E]`` (module indices), sorted ``receivers`` and ``senders``. Without ``sizes``:
      ``N = G n``, ``E = G n(n-1)``, ``G`` graphs, ``node_position`` None. With ``sizes``:
      ``N, E = sizes.budget`` and a last padding graph as ``jraph.pad_with_graphs`` makes it
      (padding edges join the last padding node; its nodes are zeros), and
      ``node_position`` int32 ``[G, n]`` is each task object's row in ``nodes`` (``N`` for
      padded objects), for :func:`graphs_to_tasks`.
    """
    import jax.numpy as jnp
    import jraph

    g, n = states.shape[0], states.shape[1]
    e = num_edges(n)
    if structure.shape != (g, e):
        raise ValueError(f"structure must be [{g}, {e}] for {g} tasks of {n} nodes")
    receivers, senders = edge_index(n)
    if sizes is None:
        offsets = (np.arange(g, dtype=np.int32) * n)[:, None]
        graphs = jraph.GraphsTuple(
            nodes=states.reshape(g * n, *states.shape[2:]),
            edges=structure.reshape(g * e),
            senders=jnp.asarray((senders[None, :] + offsets).reshape(-1)),
            receivers=jnp.asarray((receivers[None, :] + offsets).reshape(-1)),
            n_node=jnp.full((g,), n, jnp.int32),
            n_edge=jnp.full((g,), e, jnp.int32),
            globals=None,
        )
        return graphs, None
    budget = sizes.budget
    if not isinstance(budget, GraphBudget):
        raise ValueError(f"sizes.budget must be a GraphBudget, got {budget!r}")
    if not _traced(sizes.counts):  # concrete counts: a too-small budget would drop nodes
        check_budget(np.asarray(sizes.counts), budget)
    sizes = jnp.asarray(sizes.counts, jnp.int32)
    if sizes.shape != (g,):
        raise ValueError(f"sizes must be [{g}] for {g} tasks, got {sizes.shape}")
    node_offset = jnp.cumsum(sizes) - sizes  # [G]
    real_node = jnp.arange(n)[None, :] < sizes[:, None]  # [G, n]
    node_position = jnp.where(
        real_node, node_offset[:, None] + jnp.arange(n)[None, :], budget.nodes
    )
    node_source = index_map(node_position.reshape(-1), budget.nodes)  # [N] in [0, G n]
    real_edge = (receivers[None, :] < sizes[:, None]) & (senders[None, :] < sizes[:, None])
    edge_count = sizes * (sizes - 1)
    rank = jnp.cumsum(real_edge, axis=1) - 1
    edge_position = jnp.where(
        real_edge, (jnp.cumsum(edge_count) - edge_count)[:, None] + rank, budget.edges
    )
    edge_source = index_map(edge_position.reshape(-1), budget.edges)  # [E] in [0, G e]
    pad_node = budget.nodes - 1
    flat_structure = jnp.concatenate([structure.reshape(-1), jnp.zeros((1,), structure.dtype)])

    def ends(ids):  # [e] per-task node ids of each edge's end -> [E] rows in nodes
        rows = (node_offset[:, None] + jnp.asarray(ids)[None, :]).reshape(-1)
        return jnp.concatenate([rows, jnp.full((1,), pad_node)])[edge_source].astype(jnp.int32)

    flat_states = states.reshape(g * n, *states.shape[2:])
    zero = jnp.zeros((1, *flat_states.shape[1:]), flat_states.dtype)
    total_nodes, total_edges = sizes.sum(), edge_count.sum()
    graphs = jraph.GraphsTuple(
        nodes=jnp.concatenate([flat_states, zero])[node_source],
        edges=flat_structure[edge_source],
        senders=ends(senders),
        receivers=ends(receivers),
        n_node=jnp.concatenate([sizes, (budget.nodes - total_nodes)[None]]),
        n_edge=jnp.concatenate([edge_count, (budget.edges - total_edges)[None]]),
        globals=None,
    )
    return graphs, node_position.astype(jnp.int32)


def index_map(position, size: int):
    """Inverse of a partial one-to-one map: ``source[position[r]] = r`` (traceable).

    Args:
      position: int ``[R]`` row of each of ``R`` items in an ``[size]`` buffer, ``size`` for
        items that have none.

    Returns:
      int32 ``[size]``: the item in each row, ``R`` for rows that hold none.
    """
    import jax.numpy as jnp

    r = position.shape[0]
    source = jnp.full((size + 1,), r, jnp.int32).at[position].set(jnp.arange(r, dtype=jnp.int32))
    return source[:size]


def graphs_to_tasks(nodes, num_nodes: int, node_position=None):
    """Per-task node arrays ``[..., G, n, d]`` from super-graph rows ``nodes [..., N, d]``.

    ``node_position``: None for a super-graph without padding (:func:`tasks_to_graphs`
    without ``sizes``); else its ``[G, n]`` rows, and padded objects get zeros.
    """
    import jax.numpy as jnp

    if node_position is None:
        return nodes.reshape(*nodes.shape[:-2], -1, num_nodes, nodes.shape[-1])
    zero = jnp.zeros((*nodes.shape[:-2], 1, nodes.shape[-1]), nodes.dtype)
    return jnp.concatenate([nodes, zero], axis=-2)[..., node_position, :]

"""Fully-connected directed graphs, edge indexing and jraph super-graphs.

Edge convention (the one of Kipf et al.'s released code): the directed edges of an
``n``-particle system are the off-diagonal entries of an ``[n, n]`` matrix in row-major
order, row = receiver ``i``, column = sender ``j``. Edge ``e`` therefore carries the
message ``j -> i`` and the ``n - 1`` edges entering receiver ``i`` are consecutive:
``e in [i*(n-1), (i+1)*(n-1))``. A structure / label vector is ``[n(n-1)]`` in this order.
"""

from __future__ import annotations

import functools

import numpy as np


def num_edges(num_nodes: int) -> int:
    """Number of directed edges ``n(n-1)`` of the complete graph without self loops."""
    if num_nodes < 2:
        raise ValueError(f"need at least 2 particles for a graph, got {num_nodes}")
    return num_nodes * (num_nodes - 1)


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


def tasks_to_graphs(states, structure):
    """Super-graph of ``B`` complete task graphs (one ``GraphsTuple``, jraph's batching).

    Args:
      states: ``[B, n, d]`` node states of each task.
      structure: int ``[B, n(n-1)]`` module index per directed edge (receiver-major).

    Returns:
      ``jraph.GraphsTuple`` with ``nodes [B*n, d]``, ``edges [B*n(n-1)]`` (module indices),
      and senders/receivers offset per task.
    """
    import jax.numpy as jnp
    import jraph

    b, n = states.shape[0], states.shape[1]
    e = num_edges(n)
    if structure.shape != (b, e):
        raise ValueError(f"structure must be [{b}, {e}] for {b} tasks of {n} nodes")
    receivers, senders = edge_index(n)
    offsets = (np.arange(b, dtype=np.int32) * n)[:, None]
    return jraph.GraphsTuple(
        nodes=states.reshape(b * n, *states.shape[2:]),
        edges=structure.reshape(b * e),
        senders=jnp.asarray((senders[None, :] + offsets).reshape(-1)),
        receivers=jnp.asarray((receivers[None, :] + offsets).reshape(-1)),
        n_node=jnp.full((b,), n, jnp.int32),
        n_edge=jnp.full((b,), e, jnp.int32),
        globals=None,
    )


def graphs_to_tasks(graphs, num_nodes: int):
    """Node states ``[B, n, d]`` of a super-graph built by :func:`tasks_to_graphs`."""
    return graphs.nodes.reshape(-1, num_nodes, *graphs.nodes.shape[1:])

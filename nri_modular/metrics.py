"""Scores of inferred structures and predictions: the module -> relation map, edge accuracy,
per-step prediction MSE (one home for each; Kipf et al. 2018's protocol, paper Tables 1-2).

Modules are unlabelled: module ``k`` means relation type ``mapping[k]`` only after a map is
chosen. It is chosen once, on the training tasks (the best one-to-one map of
:func:`best_mapping`), then used to score every other task.

Every function takes numpy or JAX arrays. Numpy in, numpy out (means in float64, as the
reported results); JAX arrays in (inside ``jax.jit`` too), JAX arrays out (the step's
training metrics).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

PADDING = -1  # the label of an edge that touches a padded object: no edge, never scored


def _is_jax(*arrays) -> bool:
    return any(isinstance(a, jax.Array) for a in arrays)


def confusion(structures, labels, num_modules: int, num_types: int) -> jax.Array:
    """Counts ``[K, R]`` of (module, true relation type) over all edges of all tasks.

    Args:
      structures: int ``[..., E]`` module of every edge.
      labels: int ``[..., E]`` true relation type of every edge (same shape); ``-1``
        (:data:`PADDING`): no edge (it touches a padded object), not counted.
    """
    if structures.shape != labels.shape:
        raise ValueError(f"structures {structures.shape} and labels {labels.shape} differ in shape")
    labels = jnp.asarray(labels).reshape(-1)
    idx = jnp.asarray(structures).reshape(-1) * num_types + labels
    idx = jnp.where(labels < 0, num_modules * num_types, idx)  # padding: dropped
    counts = jnp.zeros(num_modules * num_types, jnp.int32).at[idx].add(1, mode="drop")
    return counts.reshape(num_modules, num_types)


def mapping_candidates(num_modules: int, num_types: int) -> np.ndarray:
    """All module->type maps considered "one-to-one": int32 ``[M, K]``.

    ``K <= R``: every injective map (permutations when ``K == R``). ``K > R`` (more modules
    than relation types) has no injective map; there each module is later mapped to its
    majority type (see :func:`best_mapping`), and this returns an empty ``[0, K]``.
    """
    if num_modules > num_types:
        return np.zeros((0, num_modules), np.int32)
    perms = list(itertools.permutations(range(num_types), num_modules))
    return np.asarray(perms, np.int32)


def best_mapping(counts: jax.Array) -> jax.Array:
    """Module->type map maximising agreement given confusion ``counts [K, R]``; int32 ``[K]``."""
    k, r = counts.shape
    cands = mapping_candidates(k, r)
    if cands.shape[0] == 0:
        return jnp.argmax(counts, axis=1).astype(jnp.int32)
    scores = counts[jnp.arange(k)[None, :], jnp.asarray(cands)].sum(axis=1)
    return jnp.asarray(cands)[jnp.argmax(scores)]


def module_mapping(structures, labels, num_modules: int, num_types: int):
    """Best module -> relation type map on (training) tasks: int32 ``[num_modules]``.

    Args:
      structures: int ``[N, E]`` module of every edge of every task.
      labels: int ``[N, E]`` true relation types.

    Returns:
      ``mapping [num_modules]``: numpy for numpy inputs, else a JAX array.
    """
    mapping = best_mapping(confusion(structures, labels, num_modules, num_types))
    return mapping if _is_jax(structures, labels) else np.asarray(mapping)


def edge_accuracy(structures, labels, mapping):
    """Fraction of directed edges whose mapped module equals the true relation type.

    Args:
      structures: int ``[N, E]``; labels: int ``[N, E]`` (``-1``: padding, not counted);
      mapping: int ``[num_modules]``.

    Returns:
      A Python float (float64 mean over the real edges) for numpy ``structures``; a
      float32 JAX scalar for JAX ones (inside ``jax.jit`` too).
    """
    if structures.shape != labels.shape:
        raise ValueError(f"structures {structures.shape} and labels {labels.shape} differ")
    if _is_jax(structures):
        labels = jnp.asarray(labels)
        real = labels >= 0
        return ((jnp.asarray(mapping)[structures] == labels) & real).sum() / real.sum()
    labels = np.asarray(labels)
    real = labels >= 0
    return float((np.asarray(mapping)[np.asarray(structures)[real]] == labels[real]).mean())


def accuracy_by_size(structures, labels, mapping, sizes) -> dict[str, float]:
    """:func:`edge_accuracy` of the systems of each size: ``{"n": accuracy}`` (numpy).

    Args:
      structures, labels: int ``[N, E]`` (``-1`` labels: padding); mapping: int ``[K]``;
      sizes: int ``[N]`` objects of each system.
    """
    sizes = np.asarray(sizes)
    return {
        str(int(n)): edge_accuracy(
            np.asarray(structures)[sizes == n], np.asarray(labels)[sizes == n], mapping
        )
        for n in np.unique(sizes)
    }


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for the binary ``labels`` (ties count 1/2).

    The probability that a random positive edge scores above a random negative one
    (Mann-Whitney). Args: ``scores`` float ``[...]``, ``labels`` 0/1 ``[...]``.

    Raises:
      ValueError: only one class among the labels (no AUROC exists).
    """
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"AUROC needs both classes; got {pos} positive and {neg} negative")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # average ranks of tied scores
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def squared_error_per_step(predictions, truth, node_mask=None):
    """Per-task, per-step MSE over particles and state dims: ``[B, H, n, 4] -> [B, H]``.

    ``node_mask``: bool ``[B, n]``, the real objects of systems of different sizes (the
    mean is over each task's real objects); None: every object.
    """
    if predictions.shape != truth.shape:
        raise ValueError(f"predictions {predictions.shape} and truth {truth.shape} differ")
    xp = jnp if _is_jax(predictions, truth, node_mask) else np
    if node_mask is None:
        return xp.square(predictions - truth).mean(axis=(2, 3))
    real = xp.asarray(node_mask, predictions.dtype)[:, None, :]  # [B, 1, n]
    per_node = xp.square(predictions - truth).mean(axis=3)  # [B, H, n]
    return (per_node * real).sum(axis=2) / real.sum(axis=2)


def mse_per_step(predictions, truth):
    """MSE of the ``k``-step prediction at entry ``k - 1``: ``[B, H, n, 4] x2 -> [H]``.

    Averaged over tasks, particles and the 4 state dims (normalised units).
    """
    return squared_error_per_step(predictions, truth).mean(axis=0)

"""Batches of task indices: shuffled training epochs (with virtual shards) and padded
evaluation batches.

A batch is int32 task indices ``[batch_size]`` into a split (``Split.states[ids]``,
``Split.labels[ids]``). Shapes are static: training drops (or wraps) the last partial
batch; evaluation pads it and says which entries are real.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def task_batches(
    num_tasks: int,
    batch_size: int,
    seed: int,
    epoch: int,
    drop_remainder: bool = True,
    shards: int = 1,
) -> np.ndarray:
    """A shuffled epoch of fixed-size batches of task indices.

    Deterministic in ``(seed, epoch, shards)``, so a resumed run replays the same order.

    With ``shards = V > 1`` the tasks are ``V`` contiguous blocks of ``num_tasks / V``
    (virtual shards), each shuffled on its own, and slice ``v`` of every batch (rows
    ``[v B/V, (v+1) B/V)``) holds only tasks of block ``v``. A device that holds batch
    rows ``[d B/D, (d+1) B/D)`` (``D`` devices dividing ``V``) thus only ever sees tasks
    ``[d N/D, (d+1) N/D)``: the rows of the per-task state it holds, and the only rows
    its host needs to load. The order depends on ``V``, never on the device count.

    Args:
      num_tasks: tasks in the split.
      batch_size: tasks per batch.
      seed, epoch: the permutation is ``default_rng([seed, epoch]).permutation`` (block
        ``v`` of ``V > 1``: ``default_rng([seed, epoch, V, v])``).
      drop_remainder: drop the last partial batch; otherwise it is filled up with the
        first tasks of the permutation (they appear twice in that epoch).
      shards: ``V``; must divide ``num_tasks`` and ``batch_size``.

    Returns:
      int32 ``[num_batches, batch_size]``.
    """
    if num_tasks <= 0 or batch_size <= 0:
        raise ValueError(
            f"num_tasks and batch_size must be positive, got {num_tasks}, {batch_size}"
        )
    if drop_remainder and batch_size > num_tasks:
        raise ValueError(f"batch_size={batch_size} > num_tasks={num_tasks}: no full batch")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got {seed}, {epoch}")
    if shards < 1 or num_tasks % shards or batch_size % shards:
        raise ValueError(
            f"task shards={shards} must be >= 1 and divide num_tasks={num_tasks} and "
            f"batch_size={batch_size}"
        )
    if shards > 1:
        size = num_tasks // shards
        blocks = [
            _batches_of(
                np.random.default_rng([seed, epoch, shards, v]).permutation(size) + v * size,
                batch_size // shards,
                drop_remainder,
            )
            for v in range(shards)
        ]
        return np.concatenate(blocks, axis=1)
    perm = np.random.default_rng([seed, epoch]).permutation(num_tasks)
    return _batches_of(perm, batch_size, drop_remainder)


def check_block_local(task_ids: np.ndarray, num_tasks: int, shards: int) -> None:
    """Raises unless slice ``v`` of the batch ``task_ids`` lies in block ``v`` of the tasks.

    The precondition of block-local per-task gathers (``bouncegrad.gather_tasks``), which
    would otherwise read clamped, wrong rows; :func:`task_batches` guarantees it.

    Args:
      task_ids: int ``[B]`` one batch.
      num_tasks: ``N``.
      shards: ``V`` (dividing ``N`` and ``B``).
    """
    ids = np.asarray(task_ids)
    if shards == 1:
        return
    block = ids.reshape(shards, -1) // (num_tasks // shards)
    bad = block != np.arange(shards)[:, None]
    if bad.any():
        v = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"batch slice {v} of task_shards={shards} holds tasks outside block {v} "
            f"([{v * (num_tasks // shards)}, {(v + 1) * (num_tasks // shards)})): "
            f"{ids.reshape(shards, -1)[v].tolist()}; make batches with "
            "task_batches(shards=task_shards)"
        )


def _batches_of(perm: np.ndarray, batch_size: int, drop_remainder: bool) -> np.ndarray:
    """int32 ``[num_batches, batch_size]`` consecutive slices of a permutation."""
    perm = perm.astype(np.int32)
    num_batches, rest = divmod(len(perm), batch_size)
    if rest and not drop_remainder:
        num_batches += 1
        perm = np.resize(perm, num_batches * batch_size)  # wraps around
    return perm[: num_batches * batch_size].reshape(num_batches, batch_size)


def eval_batches(num_tasks: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every task once, in order, in fixed-size batches with a validity mask.

    Returns:
      ``(indices int32 [num_batches, batch_size], mask bool [num_batches, batch_size])``;
      padding entries repeat the last task and have ``mask`` False.
    """
    if num_tasks <= 0 or batch_size <= 0:
        raise ValueError(
            f"num_tasks and batch_size must be positive, got {num_tasks}, {batch_size}"
        )
    num_batches = -(-num_tasks // batch_size)
    flat = np.arange(num_batches * batch_size)
    mask = flat < num_tasks
    indices = np.minimum(flat, num_tasks - 1).astype(np.int32)
    return indices.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)


def padded_batches(num_tasks: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Yields ``(indices int32 [batch_size], valid)`` over :func:`eval_batches`: every task
    once, in order; only the first ``valid`` entries of a batch are real tasks."""
    indices, mask = eval_batches(num_tasks, batch_size)
    for idx, valid in zip(indices, mask.sum(axis=1), strict=True):
        yield idx, int(valid)

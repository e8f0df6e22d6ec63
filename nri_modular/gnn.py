"""Message passing with a structure-selected edge module per edge, rollouts, and the loss.

Message passing runs on jraph ``GraphsTuple`` super-graphs (:func:`graph_step`): a batch of
task graphs is one graph whose ``edges`` are module indices, messages are computed per
edge and summed into receivers with ``segment_sum``. Tasks come in padded per-task arrays
(``states [G, n, d]``, ``structure [G, n(n-1)]``) and, when the systems have different
numbers of objects, ``sizes [G]`` and a static :class:`~nri_modular.graph.GraphBudget`:
:func:`nri_modular.graph.tasks_to_graphs` then keeps only the real nodes and edges, padded
to the budget as ``jraph.pad_with_graphs`` does, so a batch costs its real edges (rounded
up to a bucket), not ``G n(n-1)``.

Each edge is computed only by the module its structure picks (``edge_compute="blocked"``):
edges are grouped by module into fixed-size row blocks (static shapes; at most ``K - 1``
partly empty blocks), each block is one batched matmul with its module's weights. This
costs ~1x the FLOPs of the chosen modules instead of Kx for computing every module on every
edge (``edge_compute="all"``, kept for comparison).

With ``groups = V > 1`` (:func:`rollout`) the tasks are ``V`` equal contiguous groups, each
its own super-graph with its own edge layout, vmapped over a leading group axis: when that
axis is split over devices, every device sorts and computes only its own edges, with no
communication. Same messages, other block boundaries.
"""

from __future__ import annotations

import math

import flax
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from nri_modular import graph as graph_lib
from nri_modular.modules import ModuleBank, Params

EDGE_COMPUTE_KINDS = ("blocked", "all")


@flax.struct.dataclass
class EdgeLayout:
    """Where each edge row goes in the module-sorted, block-padded buffer.

    Attributes:
      position: int32 ``[rows]``, slot of row ``r`` in the ``[num_blocks * block_rows]`` buffer.
      source: int32 ``[num_blocks * block_rows]``, row feeding each slot (``rows`` = empty slot).
      block_module: int32 ``[num_blocks]``, the module every row of a block uses.
      module: int32 ``[rows]``, the module of each row (for ``edge_compute="all"``).
      block_rows: static rows per block.
    """

    position: jax.Array
    source: jax.Array
    block_module: jax.Array
    module: jax.Array
    block_rows: int = flax.struct.field(pytree_node=False)


def make_layout(module: jax.Array, num_modules: int, block_rows: int = 512) -> EdgeLayout:
    """Groups edge rows by module into blocks.

    Args:
      module: int32 ``[rows]`` module index of each edge row (values in ``[0, K)``).
      num_modules: K.
      block_rows: maximum rows per block (smaller for small inputs).

    Returns:
      An :class:`EdgeLayout` with ``ceil(rows / b) + K - 1`` blocks of ``b`` rows.
    """
    rows = module.shape[0]
    b = max(8, min(block_rows, -(-rows // (4 * num_modules)) // 8 * 8 + 8))
    num_blocks = -(-rows // b) + num_modules - 1
    onehot = jax.nn.one_hot(module, num_modules, dtype=jnp.int32)  # [rows, K]
    counts = onehot.sum(0)
    blocks_per_module = -(-counts // b)
    first_block = jnp.cumsum(blocks_per_module) - blocks_per_module
    rank = jnp.take_along_axis(jnp.cumsum(onehot, 0), module[:, None], axis=1)[:, 0] - 1
    position = first_block[module] * b + rank
    source = (
        jnp.full((num_blocks * b,), rows, jnp.int32)
        .at[position]
        .set(jnp.arange(rows, dtype=jnp.int32))
    )
    block_module = jnp.searchsorted(
        jnp.cumsum(blocks_per_module), jnp.arange(num_blocks), side="right"
    )
    block_module = jnp.minimum(block_module, num_modules - 1).astype(jnp.int32)
    return EdgeLayout(position, source, block_module, module.astype(jnp.int32), b)


@jax.custom_vjp
def _permute_rows(x: jax.Array, index: jax.Array, inverse: jax.Array) -> jax.Array:
    """``concat(x, 0)[index]`` for a one-to-one ``index`` whose inverse map is ``inverse``.

    Gathering with ``inverse`` is the exact transpose, so the backward pass is a gather too
    (XLA's scatter-add, the default transpose of a gather, is several times slower on CPU).

    Args:
      x: ``[rows, d]``.
      index: int32 ``[out_rows]`` in ``[0, rows]`` (``rows`` selects a zero row).
      inverse: int32 ``[rows]`` with ``index[inverse[r]] == r``.
    """
    return jnp.concatenate([x, jnp.zeros((1, x.shape[1]), x.dtype)])[index]


def _permute_rows_fwd(x, index, inverse):
    return _permute_rows(x, index, inverse), (index, inverse)


def _permute_rows_bwd(res, g):
    index, inverse = res
    return _permute_rows(g, inverse, index), None, None


_permute_rows.defvjp(_permute_rows_fwd, _permute_rows_bwd)


def edge_messages(
    bank: ModuleBank, edge_params: Params, x: jax.Array, layout: EdgeLayout, edge_compute: str
) -> jax.Array:
    """Messages of every edge row with its own module.

    Args:
      x: ``[rows, 2 * state_dim]`` edge inputs ``[s_sender, s_receiver]``.

    Returns:
      ``[rows, message_dim]``.
    """
    if edge_compute == "blocked":
        padded = _permute_rows(x, layout.source, layout.position)
        blocks = padded.reshape(-1, layout.block_rows, x.shape[1])  # [blocks, b, 2d]
        out = bank.apply_edge_blocks(edge_params, layout.block_module, blocks)
        return _permute_rows(out.reshape(-1, out.shape[-1]), layout.position, layout.source)
    if edge_compute == "all":
        every = bank.apply_edge_all(edge_params, x)  # [K, rows, H]
        return jnp.take_along_axis(every, layout.module[None, :, None], axis=0)[0]
    raise ValueError(f"unknown edge_compute {edge_compute!r}; expected one of {EDGE_COMPUTE_KINDS}")


def task_layout(structure: jax.Array, num_modules: int, block_rows: int = 512) -> EdgeLayout:
    """Layout of ``[G, n(n-1)]`` structures flattened graph-major (row = g * E + e)."""
    return make_layout(structure.reshape(-1), num_modules, block_rows)


def message_passing_step(
    bank: ModuleBank,
    params: Params,
    states: jax.Array,
    layout: EdgeLayout,
    edge_compute: str = "blocked",
) -> jax.Array:
    """One step ``s' = s + g([s, sum_j h_{S_ji}(s_j, s_i)])`` on a batch of complete graphs.

    Args:
      states: ``[G, n, state_dim]``.
      layout: from :func:`task_layout` of the ``[G, n(n-1)]`` structures.

    Returns:
      ``[G, n, state_dim]`` next states.
    """
    g, n, _ = states.shape
    structure = jnp.zeros((g, graph_lib.num_edges(n)), jnp.int32)  # layout holds the modules
    graphs, _ = graph_lib.tasks_to_graphs(states, structure)
    out = graph_step(bank, params, graphs, layout=layout, edge_compute=edge_compute)
    return graph_lib.graphs_to_tasks(out.nodes, n)


def graph_step(
    bank: ModuleBank,
    params: Params,
    graphs: jraph.GraphsTuple,
    *,
    layout: EdgeLayout | None = None,
    block_rows: int = 512,
    edge_compute: str = "blocked",
) -> jraph.GraphsTuple:
    """One message-passing step on a jraph super-graph (``jraph.GraphNetwork``).

    Args:
      graphs: ``nodes [N, state_dim]`` states, ``edges`` int32 ``[E]`` module index per edge,
        ``senders``/``receivers`` ``[E]``, receivers sorted (as every graph built by
        :func:`nri_modular.graph.tasks_to_graphs` is).
      layout: the module layout of ``graphs.edges`` (:func:`make_layout`), computed once
        per rollout; by default made here.

    Returns:
      The same graphs with ``nodes`` advanced one step (``edges`` keep the structure).
    """
    receivers = graphs.receivers
    if not isinstance(receivers, jax.core.Tracer) and np.any(np.diff(np.asarray(receivers)) < 0):
        raise ValueError(
            "graph_step sums messages into sorted receivers; sort the edges by receiver"
        )
    if layout is None:
        if not jnp.issubdtype(graphs.edges.dtype, jnp.integer):
            raise ValueError(f"graphs.edges must hold int module indices, got {graphs.edges.dtype}")
        layout = make_layout(graphs.edges, bank.num_modules, block_rows)

    def update_edge_fn(edges, sent, received, globals_):
        del edges, globals_
        x = jnp.concatenate([sent, received], axis=-1)
        return edge_messages(bank, params["edge"], x, layout, edge_compute)

    def update_node_fn(nodes, sent_agg, received_agg, globals_):
        del sent_agg, globals_
        return nodes + bank.apply_node(params["node"], jnp.concatenate([nodes, received_agg], -1))

    net = jraph.GraphNetwork(
        update_edge_fn=update_edge_fn,
        update_node_fn=update_node_fn,
        aggregate_edges_for_nodes_fn=_sum_sorted,
    )
    out = net(graphs)
    return out._replace(edges=graphs.edges)


def _sum_sorted(data: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """``segment_sum`` into receivers, which every task graph lists in sorted order."""
    return jax.ops.segment_sum(data, segment_ids, num_segments, indices_are_sorted=True)


def rollout(
    bank: ModuleBank,
    params: Params,
    initial: jax.Array,
    structure: jax.Array,
    num_steps: int,
    *,
    block_rows: int = 512,
    edge_compute: str = "blocked",
    groups: int = 1,
    sizes: graph_lib.Sizes | None = None,
) -> jax.Array:
    """Rolls the model out from ``initial`` for ``num_steps`` steps, feeding back predictions.

    The tasks become one ``GraphsTuple`` (:func:`nri_modular.graph.tasks_to_graphs`) and
    :func:`graph_step` is scanned over its nodes.

    Args:
      initial: ``[G, n, state_dim]`` (objects past ``sizes[g]`` are padding).
      structure: int32 ``[G, n(n-1)]``.
      groups: one super-graph (and edge layout) per ``groups`` consecutive sets of graphs,
        vmapped (must divide ``G``; see :func:`make_layout`): the same result, and every
        gather and sum stays within a group, device-local when the groups are sharded.
        Only 1 with ``sizes``.
      sizes: objects per task and the static padded totals (None: every task has ``n``).

    Returns:
      ``[G, num_steps, n, state_dim]`` predicted states after 1..num_steps steps (zeros for
      padded objects).
    """
    _check_structure(initial, structure, bank.num_modules)
    _check_groups(groups, initial.shape[0], "graphs")
    if sizes is not None and groups != 1:
        raise ValueError(f"tasks of different sizes are laid out as one group, got groups={groups}")
    if groups > 1:  # one super-graph per group, vmapped: gathers stay within a group's tasks
        g, n, d = initial.shape
        per_group = jax.vmap(
            lambda x, st: rollout(
                bank, params, x, st, num_steps, block_rows=block_rows, edge_compute=edge_compute
            )
        )(initial.reshape(groups, g // groups, n, d), structure.reshape(groups, g // groups, -1))
        return per_group.reshape(g, num_steps, n, d)
    graphs, node_position = graph_lib.tasks_to_graphs(initial, structure, sizes)
    layout = make_layout(graphs.edges, bank.num_modules, block_rows)

    def body(nodes, _):
        nodes = graph_step(
            bank, params, graphs._replace(nodes=nodes), layout=layout, edge_compute=edge_compute
        ).nodes
        return nodes, nodes

    _, preds = jax.lax.scan(body, graphs.nodes, None, length=num_steps)  # [steps, N, d]
    preds = graph_lib.graphs_to_tasks(preds, initial.shape[1], node_position)
    return jnp.swapaxes(preds, 0, 1)


def chunk_starts(num_frames: int, p: int) -> tuple[int, ...]:
    """Frames where ground truth is re-fed in a ``p``-step rollout over ``num_frames`` frames."""
    if p < 1:
        raise ValueError(f"rollout length p must be >= 1, got {p}")
    if num_frames < 2:
        raise ValueError(f"need at least 2 frames for a prediction loss, got {num_frames}")
    return tuple(range(0, num_frames - 1, p))


def rollout_predictions(
    bank: ModuleBank,
    params: Params,
    states: jax.Array,
    structure: jax.Array,
    p: int = 10,
    *,
    block_rows: int = 512,
    edge_compute: str = "blocked",
    groups: int = 1,
    sizes: graph_lib.Sizes | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``p``-step rollouts with truth re-fed every ``p`` frames, all chunks in parallel.

    Args:
      states: ``[B, T, n, state_dim]`` observed trajectories.
      structure: int32 ``[B, n(n-1)]``.
      groups: as in :func:`rollout` (must divide ``B``).
      sizes: objects per task (None: all ``n``), as in :func:`rollout`.

    Returns:
      ``(preds, targets, mask)``: ``preds`` and ``targets`` ``[B, C, p, n, d]``, ``mask``
      ``[C, p]`` (1 where the target frame exists), ``C = ceil((T - 1) / p)`` chunks.
    """
    b, t, n, d = states.shape
    _check_structure(states[:, 0], structure, bank.num_modules)
    _check_groups(groups, b, "tasks")
    starts = jnp.asarray(chunk_starts(t, p))
    c = starts.shape[0]
    initial = states[:, starts].reshape(b * c, n, d)
    preds = rollout(
        bank,
        params,
        initial,
        jnp.repeat(structure, c, axis=0),
        p,
        block_rows=block_rows,
        edge_compute=edge_compute,
        groups=groups,
        sizes=None if sizes is None else sizes.repeat(c),
    ).reshape(b, c, p, n, d)
    frames = starts[:, None] + jnp.arange(1, p + 1)[None, :]  # [C, p]
    mask = (frames < t).astype(states.dtype)
    targets = states[:, jnp.minimum(frames, t - 1)]
    return preds, targets, mask


def rollout_loss(
    bank: ModuleBank,
    params: Params,
    states: jax.Array,
    structure: jax.Array,
    p: int = 10,
    *,
    block_rows: int = 512,
    edge_compute: str = "blocked",
    groups: int = 1,
    huber_delta: float | None = None,
    sizes: graph_lib.Sizes | None = None,
) -> jax.Array:
    """Per-task MSE of ``p``-step rollouts (the energy of a structure).

    Args:
      states: ``[B, T, n, state_dim]``.
      structure: int32 ``[B, n(n-1)]``.
      groups: as in :func:`rollout` (must divide ``B``).
      huber_delta: ``None``: squared error; else the Huber penalty of :func:`penalty`.
      sizes: objects per task (None: all ``n``): the mean is over each task's real objects.

    Returns:
      ``[B]`` mean penalty (squared error by default) over predicted frames, particles
      and state dims.
    """
    preds, targets, mask = rollout_predictions(
        bank,
        params,
        states,
        structure,
        p,
        block_rows=block_rows,
        edge_compute=edge_compute,
        groups=groups,
        sizes=sizes,
    )
    if sizes is None:
        per_step = penalty(preds - targets, huber_delta).mean(axis=(-1, -2))  # [B, C, p]
    else:
        real = sizes.node_mask(states.shape[2]).astype(preds.dtype)  # [B, n]
        per_node = penalty(preds - targets, huber_delta).mean(axis=-1)  # [B, C, p, n]
        per_step = (per_node * real[:, None, None]).sum(-1) / real.sum(-1)[:, None, None]
    return (per_step * mask[None]).sum(axis=(1, 2)) / mask.sum()


def penalty(err: jax.Array, huber_delta: float | None = None) -> jax.Array:
    """Cost of each prediction error (any shape): ``err**2``, or Huber with ``huber_delta``.

    Huber: ``e**2`` if ``|e| <= delta``, else ``2 * delta * |e| - delta**2`` (the same
    value and slope at ``delta``, linear beyond), so rare large errors (close encounters
    of charged particles) weigh less. ``delta`` is in normalised units.
    """
    if huber_delta is None:
        return jnp.square(err)
    a = jnp.abs(err)
    return jnp.where(a <= huber_delta, jnp.square(a), 2 * huber_delta * a - huber_delta**2)


def rollout_flops(bank: ModuleBank, num_tasks: int, num_frames: int, n: int, p: int) -> int:
    """Forward FLOPs of :func:`rollout_loss` counting only the module each edge uses."""
    steps = len(chunk_starts(num_frames, p)) * p
    per_graph_step = n * (n - 1) * bank.flops_per_edge() + n * bank.flops_per_node()
    return num_tasks * steps * per_graph_step


def incoming_config_losses(
    bank: ModuleBank,
    params: Params,
    states: jax.Array,
    configs: jax.Array,
    stride: int = 1,
    chunk_rows: int = 512,
    groups: int = 1,
    huber_delta: float | None = None,
    sizes: graph_lib.Sizes | None = None,
) -> jax.Array:
    """One-step (teacher-forced) loss of node ``i`` for every setting of its incoming edges.

    Under the one-step loss, the edges entering node ``i`` change only node ``i``'s
    prediction, so the loss of a structure is ``sum_i loss_i(S[edges into i])`` and the
    exact best structure is found node by node.

    Cost: every module runs once on every edge, and its message is projected once by the
    node module's (linear) first layer; a setting's first-layer pre-activation is then a
    sum of ``n - 1`` selected projections (a ``[C, (n-1)K]`` one-hot matmul), so only the
    node module's later layers run once per setting. That part runs over chunks of
    ``chunk_rows`` (transition, node) rows (``lax.map``) so its ``C``-fold intermediates
    stay in cache (2.2x faster than one pass on a 2-core CPU at 1,000 tasks); ``0`` = one
    pass (better on accelerators).

    Args:
      states: ``[B, T, n, d]``.
      configs: int32 ``[C, n-1]``, settings of a node's incoming edges (``C = K^(n-1)``).
      stride: score every ``stride``-th transition only (cheaper, noisier).
      chunk_rows: rows per chunk of the per-setting node pass (``0``: no chunking).
      groups: compute each of ``groups`` consecutive sets of tasks on its own (batched
        over a leading group axis; must divide ``B``): the same scores, and device-local
        when the groups are split over devices (see :func:`rollout`).
      huber_delta: ``None``: squared error; else the Huber penalty of :func:`penalty`.
      sizes: objects per task (None: all ``n``). Edges from padded objects send nothing
        (every setting of them scores the same) and padded nodes score 0.

    Returns:
      ``[B, n, C]`` mean one-step penalty (squared error by default) of node ``i`` under
      setting ``c``.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if chunk_rows < 0:
        raise ValueError(f"chunk_rows must be >= 0, got {chunk_rows}")
    b, _, n, d = states.shape
    _check_groups(groups, b, "tasks")
    if groups > 1:
        # vmap runs a chunk of every group at once: chunks of chunk_rows / groups rows per
        # group keep the cache-sized working set (and the padding per group small).
        inner = 0 if chunk_rows == 0 else max(1, chunk_rows // groups)
        grouped = lambda a: a.reshape(groups, b // groups, *a.shape[1:])  # noqa: E731
        per_group = jax.vmap(
            lambda s, z: incoming_config_losses(
                bank, params, s, configs, stride, inner, huber_delta=huber_delta, sizes=z
            )
        )(grouped(states), None if sizes is None else jax.tree.map(grouped, sizes))
        return per_group.reshape(b, *per_group.shape[2:])
    receivers, senders = graph_lib.edge_index(n)
    current = states[:, :-1:stride]  # [B, T', n, d]
    following = states[:, 1::stride]
    t = current.shape[1]
    rows = b * t * n
    x = jnp.concatenate([current[:, :, senders], current[:, :, receivers]], axis=-1)
    every = bank.apply_edge_all(params["edge"], x.reshape(-1, 2 * d))  # [K, B*T'*E, H]
    w_state, w_msg, bias = bank.node_first_layer(params["node"])
    k, f = every.shape[0], w_msg.shape[1]
    m = (n - 1) * k
    proj = (every @ w_msg).reshape(k, rows, n - 1, f)  # [K, rows, n-1, F]
    if sizes is not None:  # messages of edges touching padded objects are not sent
        real = sizes.edge_mask(n).reshape(b, 1, n, n - 1)  # [B, 1, n, n-1]
        real = jnp.broadcast_to(real, (b, t, n, n - 1)).reshape(1, rows, n - 1, 1)
        proj = proj * real.astype(proj.dtype)
    proj = jnp.moveaxis(proj, 0, 2).reshape(rows, m, f)  # columns: (edge j, module k)
    onehot = jax.nn.one_hot(configs, k, dtype=proj.dtype).reshape(-1, m)  # [C, (n-1)K]
    node_states = current.reshape(rows, d)
    base = node_states @ w_state + bias[None]  # [rows, F]
    target = following.reshape(rows, d)

    def errors(chunk):  # [r, ...] rows -> [C, r] one-step penalty per setting
        p, bs, s, y = chunk
        pre = (onehot @ jnp.moveaxis(p, 1, 0).reshape(m, -1)).reshape(-1, *bs.shape)
        pred = s[None] + bank.apply_node_rest(params["node"], pre + bs[None])
        return penalty(pred - y[None], huber_delta).mean(axis=-1)

    chunk = rows if chunk_rows == 0 else min(chunk_rows, rows)
    num_chunks = -(-rows // chunk)
    pad = num_chunks * chunk - rows

    def split(a):  # [rows, ...] -> [num_chunks, chunk, ...] (zero-padded)
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(num_chunks, chunk, *a.shape[1:])

    inputs = (proj, base, node_states, target)
    if sizes is None:
        err = jax.lax.map(errors, tuple(split(a) for a in inputs))
        err = jnp.moveaxis(err, 1, 0).reshape(-1, num_chunks * chunk)[:, :rows]  # [C, rows]
        return err.reshape(-1, b, t, n).mean(axis=2).transpose(1, 2, 0)  # [B, n, C]
    # Systems of different sizes: node i of a system of s objects has r = s - 1 real
    # incoming slots, always its first r (senders j < s come first), so only the K^r
    # settings whose padded slots are 0 differ: configs[c * K^(n-1-r)] (product order).
    # Rows are sorted by r and each chunk scores the K^r settings of its largest r
    # (lax.switch), then copies each to the settings that differ only in padded slots.
    _check_product_order(configs, k)
    real_slots = jnp.where(sizes.node_mask(n), jnp.asarray(sizes.counts)[:, None] - 1, 0)
    real_slots = jnp.broadcast_to(real_slots[:, None, :], (b, t, n)).reshape(rows)
    order = jnp.argsort(real_slots, stable=True)
    chunk_slots = split(real_slots[order]).max(axis=1)  # [num_chunks]

    def branch(r):
        canonical = onehot[:: k ** (n - 1 - r)]  # [K^r, (n-1)K]

        def scores(chunk):
            p, bs, s, y = chunk
            pre = (canonical @ jnp.moveaxis(p, 1, 0).reshape(m, -1)).reshape(-1, *bs.shape)
            pred = s[None] + bank.apply_node_rest(params["node"], pre + bs[None])
            small = penalty(pred - y[None], huber_delta).mean(axis=-1)  # [K^r, chunk]
            return jnp.repeat(small, k ** (n - 1 - r), axis=0)  # [C, chunk]

        return scores

    branches = [branch(r) for r in range(n)]
    err = jax.lax.map(
        lambda a: jax.lax.switch(a[0], branches, a[1]),
        (chunk_slots, tuple(split(x[order]) for x in inputs)),
    )
    err = jnp.moveaxis(err, 1, 0).reshape(-1, num_chunks * chunk)[:, :rows]  # [C, sorted rows]
    err = err[:, jnp.argsort(order)]  # [C, rows]
    err = err.reshape(-1, b, t, n).mean(axis=2).transpose(1, 2, 0)  # [B, n, C]
    return err * sizes.node_mask(n)[..., None].astype(err.dtype)


def _check_product_order(configs: jax.Array, k: int) -> None:
    """Raises unless ``configs [C, n-1]`` lists every setting, the last slot fastest
    (``itertools.product`` order, as :func:`nri_modular.structure.incoming_configs`);
    traced configs (inside a transformation) are checked for their shape only."""
    c, slots = configs.shape
    if c != k**slots:
        raise ValueError(f"configs must list all {k}^{slots} settings, got {c}")
    if isinstance(configs, jax.core.Tracer):
        return
    digits = (np.arange(c)[:, None] // k ** np.arange(slots - 1, -1, -1)[None, :]) % k
    if c != k**slots or not np.array_equal(np.asarray(configs), digits):
        raise ValueError("configs must be every setting in product order (incoming_configs)")


def _check_groups(groups: int, size: int, what: str) -> None:
    if groups < 1 or size % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide the {size} {what}")


def _check_structure(states: jax.Array, structure: jax.Array, num_modules: int) -> None:
    g, n = states.shape[0], states.shape[1]
    e = graph_lib.num_edges(n)
    if structure.shape != (g, e):
        raise ValueError(
            f"structure must be [{g}, {e}] for {g} graphs of {n} particles, got {structure.shape}"
        )
    if not jnp.issubdtype(structure.dtype, jnp.integer):
        raise ValueError(f"structure must be an integer array, got {structure.dtype}")
    if not isinstance(structure, jax.core.Tracer) and structure.size:
        values = np.asarray(structure)  # Concrete: checked on the host, outside any trace.
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= num_modules:
            raise ValueError(
                f"structure holds module indices in [{low}, {high}]; the bank has "
                f"{num_modules} modules (valid: 0..{num_modules - 1})"
            )


def num_chunks(num_frames: int, p: int) -> int:
    """Number of ``p``-step chunks in a loss over ``num_frames`` frames."""
    return math.ceil((num_frames - 1) / p)

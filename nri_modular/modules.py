"""The module bank: K edge modules (one stacked pytree) and the shared node module.

Edge module ``h_k``: MLP ``[s_j, s_i] (8) -> hidden ... -> message`` with ReLU after every
layer (paper: ``8-256-256-256``). The K edge modules are one Flax ``init`` vmapped over K
keys, so every leaf has a leading module axis ``[K, ...]``; applying module ``k`` to a
block of edges is ``jax.vmap(EdgeMLP.apply)`` over gathered per-block parameters.

Node module ``g``: MLP ``[s_i, sum_j m_ji] (4 + message) -> hidden ... -> 4`` (paper:
``260-256-256-256-4``), ReLU between layers, linear output; the GNN adds it to ``s_i``
(residual update).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Any  # A pytree of arrays.

STATE_DIM = 4  # (x, y, vx, vy)


class EdgeMLP(nn.Module):
    """One edge module: ``[rows, 2 * state_dim] -> [rows, features[-1]]``, ReLU after each layer."""

    features: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.features:
            x = nn.relu(nn.Dense(width)(x))
        return x


class NodeMLP(nn.Module):
    """The node module: ``[rows, state_dim + message] -> [rows, state_dim]`` (a state delta)."""

    features: Sequence[int]
    out_dim: int = STATE_DIM

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.features:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.out_dim)(x)


class ModuleBank:
    """K edge modules + one node module, with plain-pytree parameters.

    ``params = {"edge": <leaves [K, ...]>, "node": <NodeMLP params>}``.

    ``init_spread`` > 0 scales module ``k``'s initial output layer by
    ``1 - init_spread * k / (K - 1)``: the modules start out different, which speeds up
    the symmetry breaking BounceGrad has to do (0 = identical distributions, the paper's).
    """

    def __init__(
        self,
        num_modules: int,
        edge_features: Sequence[int] = (256, 256, 256),
        node_features: Sequence[int] = (256, 256, 256),
        state_dim: int = STATE_DIM,
        init_spread: float = 0.0,
    ):
        if num_modules < 1:
            raise ValueError(f"num_modules must be >= 1, got {num_modules}")
        if not edge_features or not node_features:
            raise ValueError("edge_features and node_features must be non-empty")
        if any(w <= 0 for w in (*edge_features, *node_features)):
            raise ValueError(
                f"layer widths must be positive, got edge {edge_features} node {node_features}"
            )
        if not 0.0 <= init_spread < 1.0:
            raise ValueError(f"init_spread must be in [0, 1), got {init_spread}")
        self.init_spread = float(init_spread)
        self.num_modules = num_modules
        self.edge_features = tuple(int(w) for w in edge_features)
        self.node_features = tuple(int(w) for w in node_features)
        self.state_dim = state_dim
        self.message_dim = self.edge_features[-1]
        self.edge_mlp = EdgeMLP(self.edge_features)
        self.node_mlp = NodeMLP(self.node_features, out_dim=state_dim)

    def init(self, key: jax.Array) -> Params:
        """Initial parameters; edge leaves are stacked ``[K, ...]``."""
        k_edge, k_node = jax.random.split(key)
        edge_in = jnp.zeros((1, 2 * self.state_dim), jnp.float32)
        node_in = jnp.zeros((1, self.state_dim + self.message_dim), jnp.float32)
        edge = jax.vmap(self.edge_mlp.init, in_axes=(0, None))(
            jax.random.split(k_edge, self.num_modules), edge_in
        )
        if self.init_spread > 0 and self.num_modules > 1:
            # Symmetry breaking: module k's output layer starts scaled by 1 - spread * k/(K-1),
            # so the modules differ in message magnitude from the first step.
            scales = 1.0 - self.init_spread * jnp.arange(self.num_modules) / (self.num_modules - 1)
            last = f"Dense_{len(self.edge_features) - 1}"
            layer = edge["params"][last]
            edge["params"][last] = {**layer, "kernel": layer["kernel"] * scales[:, None, None]}
        node = self.node_mlp.init(k_node, node_in)
        return {"edge": edge, "node": node}

    def apply_edge_blocks(self, edge_params: Params, block_module: jax.Array, x: jax.Array):
        """Runs module ``block_module[b]`` on every row of block ``b``.

        Args:
          edge_params: stacked edge parameters, leaves ``[K, ...]``.
          block_module: int32 ``[num_blocks]``.
          x: ``[num_blocks, block_rows, 2 * state_dim]``.

        Returns:
          ``[num_blocks, block_rows, message_dim]``.
        """
        per_block = jax.tree.map(lambda w: w[block_module], edge_params)
        return jax.vmap(self.edge_mlp.apply)(per_block, x)

    def apply_edge_all(self, edge_params: Params, x: jax.Array) -> jax.Array:
        """Runs every module on every row: ``[rows, 8] -> [K, rows, message_dim]``."""
        return jax.vmap(self.edge_mlp.apply, in_axes=(0, None))(edge_params, x)

    def apply_node(self, node_params: Params, x: jax.Array) -> jax.Array:
        """``[..., state_dim + message_dim] -> [..., state_dim]`` state delta."""
        return self.node_mlp.apply(node_params, x)

    def node_first_layer(self, node_params: Params) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The node module's first (linear) layer split by input: ``(W_state, W_message, b)``.

        ``Dense_0([s, m]) = s @ W_state + m @ W_message + b``; with :meth:`apply_node_rest`
        this lets a caller sum per-edge message projections instead of re-running the
        first layer on every candidate aggregate (exact local moves).
        """
        layer = node_params["params"]["Dense_0"]
        kernel = layer["kernel"]
        return kernel[: self.state_dim], kernel[self.state_dim :], layer["bias"]

    def apply_node_rest(self, node_params: Params, pre: jax.Array) -> jax.Array:
        """The node module after its first layer's affine map: ``[..., F0] -> [..., 4]``."""
        layers = node_params["params"]
        x = nn.relu(pre)
        for i in range(1, len(self.node_features) + 1):
            layer = layers[f"Dense_{i}"]
            x = x @ layer["kernel"] + jnp.expand_dims(layer["bias"], range(x.ndim - 1))
            if i < len(self.node_features):
                x = nn.relu(x)
        return x

    def flops_per_edge(self) -> int:
        """Multiply-add FLOPs (x2) of one edge module on one edge."""
        return _mlp_flops(2 * self.state_dim, self.edge_features)

    def flops_per_node(self) -> int:
        """FLOPs of the node module on one node."""
        return _mlp_flops(self.state_dim + self.message_dim, (*self.node_features, self.state_dim))


def _mlp_flops(in_dim: int, widths: Sequence[int]) -> int:
    total, prev = 0, in_dim
    for w in widths:
        total += 2 * prev * w
        prev = w
    return total

"""The learned proposal network: an NRI-style MLP encoder -> module logits per directed edge.

Structurally the encoder of Kipf et al. (2018) (``MLPEncoder``, factor graph variant), which
the paper uses as its proposal function (section 4)::

  node trajectory [T*4] -mlp1-> node h
  node2edge [h_sender, h_receiver] -mlp2-> edge e           (kept as the skip)
  edge2node mean over the n-1 incoming edges -mlp3-> node h'
  node2edge [h'_sender, h'_receiver, skip] -mlp4-> edge e'
  Dense -> logits [K] per directed edge

Each MLP is two ELU layers followed (optionally) by a LayerNorm. Kipf et al. use
BatchNorm there; we use LayerNorm because it keeps ``apply`` a pure function of
``(params, states)`` (no ``batch_stats`` collection to thread through the compiled
BounceGrad step or the annealing scan) and makes a task's logits independent of the other
tasks in its batch, which meta-test search (batches padded with repeated tasks) relies on.

Edges are in the receiver-major order of :mod:`nri_modular.graph`: the ``n - 1`` edges
entering node ``i`` are ``[i*(n-1), (i+1)*(n-1))``, so edge2node is a reshape + mean.

Module labels are arbitrary, so the training targets are the structures themselves (the
current annealing structures during BounceGrad, :mod:`nri_modular.bouncegrad`), with a
per-edge cross-entropy (:func:`proposal_loss`).

Usage::

  init_fn, apply_fn = make_proposal_network(num_modules=2, num_nodes=5, hidden=64)
  params = init_fn(key, states[:1])            # states [B, T, n, 4]
  logits = apply_fn(params, states)            # [B, n(n-1), K]

``apply_fn`` has the :data:`nri_modular.bouncegrad.ProposalApply` signature; reuse the same
``apply_fn`` object across calls (it is a static argument of jitted search functions).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from nri_modular import graph as graph_lib
from nri_modular.modules import Params

# Signature: (key, states_example [B, T, n, 4]) -> params
InitFn = Callable[[jax.Array, jax.Array], Params]
# Signature: (params, states [B, T, n, 4]) -> logits [B, n(n-1), K]
ApplyFn = Callable[[Params, jax.Array], jax.Array]


class EncoderMLP(nn.Module):
    """Kipf et al.'s MLP block: ``Dense -> ELU -> Dense -> ELU`` (+ LayerNorm), ``[..., F]``."""

    hidden: int
    out: int
    layer_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.elu(nn.Dense(self.hidden)(x))
        x = nn.elu(nn.Dense(self.out)(x))
        if self.layer_norm:
            x = nn.LayerNorm()(x)
        return x


class ProposalNet(nn.Module):
    """NRI MLP encoder: observed trajectories -> logits over the K modules per directed edge.

    Attributes:
      num_modules: K, the number of edge modules (output classes per edge).
      hidden: width of every hidden layer (Kipf et al.: 256).
      layer_norm: LayerNorm after each MLP block (see the module docstring).
    """

    num_modules: int
    hidden: int = 256
    layer_norm: bool = True

    @nn.compact
    def __call__(self, states: jax.Array) -> jax.Array:
        """Args:
          states: ``[B, T, n, d]`` observed trajectories (normalised).

        Returns:
          ``[B, n(n-1), K]`` unnormalised log-probabilities, receiver-major edges.
        """
        if states.ndim != 4:
            raise ValueError(f"states must be [batch, frames, nodes, dims], got {states.shape}")
        b, t, n, d = states.shape
        receivers, senders = graph_lib.edge_index(n)
        h = self.hidden

        def node2edge(x):  # [B, n, F] -> [B, E, 2F]: [sender, receiver], Kipf's order.
            return jnp.concatenate([x[:, senders], x[:, receivers]], axis=-1)

        x = jnp.swapaxes(states, 1, 2).reshape(b, n, t * d)  # each node's whole trajectory
        x = EncoderMLP(h, h, self.layer_norm, name="mlp1")(x)  # [B, n, H]
        x = EncoderMLP(h, h, self.layer_norm, name="mlp2")(node2edge(x))  # [B, E, H]
        skip = x
        x = x.reshape(b, n, n - 1, h).mean(axis=2)  # edge2node: mean over incoming edges
        x = EncoderMLP(h, h, self.layer_norm, name="mlp3")(x)  # [B, n, H]
        x = jnp.concatenate([node2edge(x), skip], axis=-1)  # [B, E, 3H]
        x = EncoderMLP(h, h, self.layer_norm, name="mlp4")(x)
        return nn.Dense(self.num_modules, name="fc_out")(x)  # [B, E, K]


def make_proposal_network(
    num_modules: int, num_nodes: int, hidden: int = 256, layer_norm: bool = True
) -> tuple[InitFn, ApplyFn]:
    """The proposal network as a pair of pure functions.

    Args:
      num_modules: K.
      num_nodes: n; inputs with another number of particles are rejected.
      hidden: hidden width (Kipf et al.: 256; 64 is enough for the 5-particle demos).
      layer_norm: LayerNorm after each MLP block.

    Returns:
      ``(init_fn, apply_fn)``: ``init_fn(key, states_example [B, T, n, 4]) -> params`` and
      ``apply_fn(params, states [B, T, n, 4]) -> logits [B, n(n-1), K]``. The first layer
      sees the flattened trajectory, so ``T`` must be the same at init and apply (49
      observed frames in training and meta-test).
    """
    if num_modules < 2:
        raise ValueError(f"a proposal needs at least 2 modules, got {num_modules}")
    if hidden < 1:
        raise ValueError(f"hidden must be positive, got {hidden}")
    graph_lib.num_edges(num_nodes)  # Fails early for n < 2.
    net = ProposalNet(num_modules=num_modules, hidden=hidden, layer_norm=layer_norm)

    def check(states):
        if states.ndim != 4 or states.shape[2] != num_nodes:
            raise ValueError(
                f"states must be [batch, frames, {num_nodes}, dims], got {states.shape}"
            )

    def init_fn(key: jax.Array, states: jax.Array) -> Params:
        check(states)
        return net.init(key, states)

    def apply_fn(params: Params, states: jax.Array) -> jax.Array:
        check(states)
        return net.apply(params, states)

    return init_fn, apply_fn


def proposal_loss(apply_fn: ApplyFn, params: Params, states: jax.Array, targets: jax.Array):
    """Mean per-edge softmax cross-entropy of the proposal's logits against structures.

    The proposal network's one training loss, wherever it is trained: BounceGrad's step 3
    (:mod:`nri_modular.bouncegrad`; targets: the current structures, which the true-edges
    trainer holds at the labels), :func:`make_supervised_step` and the supervised encoder
    baseline (:mod:`nri_modular.baselines.nri`; targets: the true relations).

    Args:
      apply_fn: ``(params, states) -> logits [B, n(n-1), K]``.
      states: ``[B, T, n, 4]``.
      targets: int32 ``[B, n(n-1)]`` structures (module index per edge).

    Returns:
      Scalar: the mean over the ``B * n(n-1)`` edges.
    """
    logits = apply_fn(params, states)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def argmax_structure(logits: jax.Array) -> jax.Array:
    """Most likely module per edge: ``[B, E, K] -> int32 [B, E]`` (meta-test initialisation)."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def make_supervised_step(apply_fn: ApplyFn, optimizer: optax.GradientTransformation):
    """``step(params, opt_state, states, targets) -> (params, opt_state, loss)`` (not jitted).

    One Optax step on :func:`proposal_loss`: what BounceGrad does with its current
    structures, usable on its own (fixed targets, e.g. true structures for a benchmark).
    """

    def step(params, opt_state, states, targets):
        loss, grads = jax.value_and_grad(lambda p: proposal_loss(apply_fn, p, states, targets))(
            params
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step

"""Kipf et al. (2018)'s NRI and its graph-network baselines, on our modules.

* ``nri_vae``: the variational auto-encoder. Encoder = our proposal network
  (:mod:`nri_modular.proposal_net`, NRI's MLP encoder) giving per-edge logits over the K
  modules; edge samples ``z ~ GumbelSoftmax(logits, tau=0.5)``, soft in training; decoder =
  our module bank with every module's message weighted by ``z`` (Kipf et al.'s MLP decoder,
  ``skip_first`` off: both edge types carry messages, as both of our modules do); loss =
  Gaussian NLL of ``p = 10``-step rollouts (truth re-fed every 10 frames) with fixed
  variance 5e-5, plus KL(q(z) || uniform). Test ("hard"): every edge takes the module of
  its largest logit, i.e. the mode of the hard Gumbel sample (Kipf et al. score edge
  accuracy with this argmax; we also predict with it, so the rollout is deterministic) and
  the bank rolls out with that structure, as ``modular`` does.
* ``nri_full_graph``: a bank of ONE edge module applied on every edge (the "full graph"
  row), trained on the same 10-step rollout MSE.
* ``nri_true_graph``: the module bank given the true relations (module ``k`` computes
  relation type ``k``), trained by the one true-edges trainer
  (:func:`nri_modular.baselines.true_edges.train_true_edges`) on the same rollout loss,
  epochs and learning-rate schedule; at test it rolls out with the test tasks' true
  relations (an upper bound for prediction; it infers nothing).
* ``supervised``: the encoder alone trained with per-edge cross-entropy on the true
  relations (the "gold standard" row of Table 2); it outputs relation types.

Settings the papers leave open, and our reading: the VAE's KL and NLL are normalised as
in Kipf et al.'s code (sums over frames and dims divided by batch x particles; KL summed
over edges and types divided by batch x particles); the epoch kept is the one with the
lowest valid loss (Kipf et al. keep the best-validation model): valid MSE of the argmax
structure's 10-step rollouts for the VAE, of the rollouts for the full graph, valid
cross-entropy for the supervised encoder.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nri_modular import gnn, proposal_net
from nri_modular import graph as graph_lib
from nri_modular.baselines import base, true_edges
from nri_modular.modules import ModuleBank, Params


def soft_step(bank: ModuleBank, params: Params, states: jax.Array, weights: jax.Array):
    """One message-passing step with every module's message weighted per edge.

    Args:
      states: ``[G, n, 4]``.
      weights: ``[G, n(n-1), K]`` edge weights (one-hot: :func:`gnn.message_passing_step`).

    Returns:
      ``[G, n, 4]``.
    """
    g, n, d = states.shape
    receivers, senders = graph_lib.edge_index(n)
    x = jnp.concatenate([states[:, senders], states[:, receivers]], axis=-1).reshape(-1, 2 * d)
    msgs = bank.apply_edge_all(params["edge"], x)  # [K, G E, M]
    msgs = jnp.einsum("kem,ek->em", msgs, weights.reshape(-1, bank.num_modules))
    agg = msgs.reshape(g, n, n - 1, -1).sum(axis=2)
    return states + bank.apply_node(params["node"], jnp.concatenate([states, agg], axis=-1))


def soft_rollout_predictions(bank, params, states, weights, p: int):
    """``p``-step rollouts with truth re-fed every ``p`` frames, soft edges.

    Args:
      states: ``[B, T, n, 4]``; weights: ``[B, E, K]``.

    Returns:
      ``(preds, targets [B, C, p, n, 4], mask [C, p])`` as :func:`gnn.rollout_predictions`.
    """
    b, t, n, d = states.shape
    starts = jnp.asarray(gnn.chunk_starts(t, p))
    c = starts.shape[0]
    w = jnp.repeat(weights, c, axis=0)

    def body(s, _):
        s = soft_step(bank, params, s, w)
        return s, s

    _, preds = jax.lax.scan(body, states[:, starts].reshape(b * c, n, d), None, length=p)
    preds = jnp.swapaxes(preds, 0, 1).reshape(b, c, p, n, d)
    frames = starts[:, None] + jnp.arange(1, p + 1)[None, :]
    mask = (frames < t).astype(states.dtype)
    return preds, states[:, jnp.minimum(frames, t - 1)], mask


def vae_loss(bank, apply_fn, params, states, key, tau, variance, p):
    """Kipf et al.'s ELBO loss: Gaussian NLL (fixed variance) + KL to the uniform prior.

    Args:
      params: ``{"encoder": ..., "decoder": ...}``.
      states: ``[B, T, n, 4]``.

    Returns:
      Scalar ``nll + kl``.
    """
    b, _, n, _ = states.shape
    logits = apply_fn(params["encoder"], states)  # [B, E, K]
    gumbel = jax.random.gumbel(key, logits.shape, logits.dtype)
    z = jax.nn.softmax((logits + gumbel) / tau, axis=-1)
    preds, targets, mask = soft_rollout_predictions(bank, params["decoder"], states, z, p)
    sq = jnp.square(preds - targets).sum(axis=(-1, -2)) * mask[None]  # [B, C, p]
    nll = sq.sum() / (2 * variance) / (b * n)
    q = jax.nn.softmax(logits, axis=-1)
    kl = (q * (jnp.log(q + 1e-16) + jnp.log(bank.num_modules))).sum() / (b * n)
    return nll + kl


def hard_rollout_mse(bank, params, states, structures, p):
    """Mean over tasks of :func:`gnn.rollout_loss` (the energy ``modular`` minimises)."""
    return gnn.rollout_loss(bank, params, states, structures, p).mean()


def _bank(config, num_modules=None) -> ModuleBank:
    return ModuleBank(num_modules or config.num_modules, config.edge_hidden, config.node_hidden)


class _EncoderArgmax:
    """Structures of a fitted encoder (``apply_enc``): every edge takes its largest logit.

    For methods whose parameters hold the encoder's (``_encoder_params``).
    """

    @functools.partial(jax.jit, static_argnums=0)
    def _infer_batch(self, params, observed):
        return proposal_net.argmax_structure(self.apply_enc(params, observed))

    def _encoder_params(self) -> Params:
        return self.params

    def infer(self, observed):
        """``[N, obs_frames, n, 4]`` -> int32 ``[N, n(n-1)]``, in test-sized batches."""
        params = self._encoder_params()
        return base.map_batches(
            lambda o: self._infer_batch(params, o), (observed,), self.config.test_batch_size
        )


class NRIVAEMethod(_EncoderArgmax, base.Method):
    """NRI (Kipf et al. 2018): proposal-network encoder, module-bank decoder, ELBO."""

    name = "nri_vae"
    infers_structure = True

    def __init__(self, config, settings):
        super().__init__(config, settings)
        self.bank = _bank(config)
        self.init_enc, self.apply_enc = proposal_net.make_proposal_network(
            config.num_modules, config.num_particles, config.proposal_hidden
        )

    def _train(self, data):
        cfg, s = self.config, self.settings
        sample = jnp.zeros((1, cfg.obs_frames, cfg.num_particles, 4), jnp.float32)

        def init(key):
            k1, k2 = jax.random.split(key)
            return {"encoder": self.init_enc(k1, sample), "decoder": self.bank.init(k2)}

        def loss(params, states, labels, key):
            del labels
            return vae_loss(
                self.bank, self.apply_enc, params, states, key, s.gumbel_tau, s.nll_variance, cfg.p
            )

        def valid(params, states, labels):
            del labels
            structures = proposal_net.argmax_structure(self.apply_enc(params["encoder"], states))
            return hard_rollout_mse(self.bank, params["decoder"], states, structures, cfg.p)

        return self._fit_adam(init, loss, valid, data)

    def _encoder_params(self) -> Params:
        return self.params["encoder"]

    def predict(self, frames, structures):
        return base.bank_predict(self.bank, self.params["decoder"], frames, structures, self.config)


class NRIFullGraphMethod(base.Method):
    """One edge module on every edge (Kipf et al.'s "NRI (full graph)"); no structure."""

    name = "nri_full_graph"

    def __init__(self, config, settings):
        super().__init__(config, settings)
        self.bank = _bank(config, num_modules=1)

    def _full(self, b: int) -> jax.Array:
        return jnp.zeros((b, graph_lib.num_edges(self.config.num_particles)), jnp.int32)

    def _train(self, data):
        cfg = self.config

        def valid(params, states, labels):
            del labels
            return hard_rollout_mse(self.bank, params, states, self._full(states.shape[0]), cfg.p)

        return self._fit_adam(
            self.bank.init,
            lambda params, states, labels, key: valid(params, states, labels),
            valid,
            data,
        )

    def predict(self, frames, structures):
        del structures
        return base.bank_predict(
            self.bank, self.params, frames, np.asarray(self._full(frames.shape[0])), self.config
        )


class NRITrueGraphMethod(base.Method):
    """The module bank on the true relations (Kipf et al.'s "NRI (true graph)")."""

    name = "nri_true_graph"
    given_true_relations = True

    def __init__(self, config, settings):
        super().__init__(config, settings)
        self.bank = _bank(config)

    def _train(self, data):
        s = self.settings
        batch_size = min(self.batch_size, data.train.num_tasks)
        steps_per_epoch = data.train.num_tasks // batch_size
        params, _ = true_edges.train_true_edges(
            self.bank,
            optax.adam(base.learning_rate_schedule(s, steps_per_epoch)),
            data.train,
            num_steps=s.epochs * steps_per_epoch,
            batch_size=batch_size,
            p=self.config.p,
            seed=s.seed,
        )
        return jax.device_get(params)

    def predict(self, frames, structures):
        return base.bank_predict(self.bank, self.params, frames, structures, self.config)


class SupervisedMethod(_EncoderArgmax, base.Method):
    """The encoder trained on the true relations (cross-entropy): Table 2's gold standard."""

    name = "supervised"
    infers_structure = True
    outputs_relation_types = True
    predicts = False

    def __init__(self, config, settings):
        super().__init__(config, settings)
        self.init_enc, self.apply_enc = proposal_net.make_proposal_network(
            base.NUM_TYPES, config.num_particles, config.proposal_hidden
        )

    def _train(self, data):
        cfg = self.config
        sample = jnp.zeros((1, cfg.obs_frames, cfg.num_particles, 4), jnp.float32)

        def loss(params, states, labels, key=None):
            return proposal_net.proposal_loss(self.apply_enc, params, states, labels)

        return self._fit_adam(lambda k: self.init_enc(k, sample), loss, loss, data)

    def predict(self, frames, structures):
        raise NotImplementedError("the supervised encoder predicts no states (Table 2 only)")
